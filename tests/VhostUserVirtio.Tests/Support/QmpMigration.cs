using System.Diagnostics;
using System.Text.Json;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// What query-migrate reports: status (none, setup, active, device, completed, failed, cancelled…),
/// and once completed the times in milliseconds: total-time from start to end, downtime (the guest
/// stopped: last RAM pass and device state), setup-time; error-desc when it failed.
/// </summary>
public sealed record MigrationInfo(string Status, long? TotalTimeMs, long? DowntimeMs, long? ExpectedDowntimeMs,
    long? SetupTimeMs, long? RamTransferredBytes, long? RamTotalBytes, long? DirtySyncCount, string? Error, string Raw)
{
    public bool Completed => Status == "completed";
    /// <summary>Failed or cancelled: nothing more will happen.</summary>
    public bool Ended => Status is "completed" or "failed" or "cancelled";

    public static MigrationInfo Parse(JsonElement r)
    {
        long? Long(JsonElement e, string name) =>
            e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.TryGetInt64(out var l) ? l : null;
        var ram = r.ValueKind == JsonValueKind.Object && r.TryGetProperty("ram", out var x) ? x : default;
        return new MigrationInfo(
            r.ValueKind == JsonValueKind.Object && r.TryGetProperty("status", out var s) ? s.GetString() ?? "" : "none",
            Long(r, "total-time"), Long(r, "downtime"), Long(r, "expected-downtime"), Long(r, "setup-time"),
            Long(ram, "transferred"), Long(ram, "total"), Long(ram, "dirty-sync-count"),
            r.ValueKind == JsonValueKind.Object && r.TryGetProperty("error-desc", out var e) ? e.GetString() : null,
            r.ToString());
    }

    public override string ToString() =>
        $"status {Status}, total-time {TotalTimeMs?.ToString() ?? "-"} ms, downtime {DowntimeMs?.ToString() ?? "-"} ms, " +
        $"setup-time {SetupTimeMs?.ToString() ?? "-"} ms, RAM {RamTransferredBytes / (1 << 20)} MiB sent of {RamTotalBytes / (1 << 20)} MiB, " +
        $"dirty syncs {DirtySyncCount}" + (Error != null ? $", error: {Error}" : "");
}

/// <summary>Live migration through QMP: start it on the source, poll query-migrate until it ends.</summary>
public static class QmpMigration
{
    public static MigrationInfo QueryMigrate(this QmpClient qmp) => MigrationInfo.Parse(qmp.Execute("query-migrate"));

    /// <summary>
    /// Starts migrating to <paramref name="uri"/> (e.g. unix:/path, where the destination QEMU was
    /// started with -incoming on the same URI). QEMU refuses at once (a <see cref="QmpException"/>)
    /// when a migration blocker is registered, e.g. a vhost-user back end without dirty-page logging.
    /// </summary>
    public static void Migrate(this QmpClient qmp, string uri) => qmp.Execute("migrate", new { uri });

    /// <summary>Sets migration parameters, e.g. <c>new Dictionary { ["downtime-limit"] = 300 }</c>.</summary>
    public static void SetMigrationParameters(this QmpClient qmp, IReadOnlyDictionary<string, object> parameters) =>
        qmp.Execute("migrate-set-parameters", parameters);

    /// <summary>Polls query-migrate every <paramref name="poll"/> (100 ms by default) until the migration ends or the timeout passes; returns the last answer.</summary>
    public static MigrationInfo WaitForMigration(this QmpClient qmp, TimeSpan timeout, Action<string>? log = null, TimeSpan? poll = null)
    {
        var clock = Stopwatch.StartNew();
        string? lastStatus = null;
        while (true)
        {
            var info = qmp.QueryMigrate();
            if (info.Status != lastStatus)
            {
                log?.Invoke($"[migration {clock.Elapsed.TotalSeconds:F1}s] {info.Status}");
                lastStatus = info.Status;
            }
            if (info.Ended || clock.Elapsed >= timeout)
                return info;
            Thread.Sleep(poll ?? TimeSpan.FromMilliseconds(100));
        }
    }

    /// <summary>query-status: the run state, e.g. running, inmigrate, postmigrate, paused.</summary>
    public static string RunState(this QmpClient qmp) => qmp.Execute("query-status").GetProperty("status").GetString() ?? "";
}
