using System.Diagnostics.Metrics;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Group.Metrics;

/// <summary>
/// A device group's counters as System.Diagnostics.Metrics instruments on the meter
/// <see cref="MeterName"/> (dotnet-counters, a MeterListener, the Prometheus endpoint). Every
/// instrument is observable: nothing is counted twice and the data path is untouched; a collection
/// reads the counters the ports already keep. One collection asks the group for one
/// <see cref="DeviceGroup.Status"/> snapshot (taken on the data path, so all ports agree) and every
/// instrument reads that snapshot: it is reused while younger than <c>maxAge</c>, which spans one
/// observation cycle of a collector but not two. docs/metrics.md lists the names.
/// </summary>
public sealed class GroupMetrics : IDisposable
{
    public const string MeterName = "VhostUserVirtio";

    private readonly DeviceGroup _group;
    private readonly long _maxAgeTicks;
    private readonly Lock _gate = new();
    private Sample? _last;
    private long _takenAt;

    /// <param name="maxAge">How long one snapshot serves the instruments (default 250 ms).</param>
    public GroupMetrics(DeviceGroup group, TimeSpan? maxAge = null)
    {
        _group = group;
        _maxAgeTicks = (long)((maxAge ?? TimeSpan.FromMilliseconds(250)).TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
        Meter = new Meter(MeterName, typeof(GroupMetrics).Assembly.GetName().Version?.ToString());

        // "tx" is what a port's user sent into the switch, "rx" what the switch delivered to it (PortCounters).
        Meter.CreateObservableCounter("vhost_virtio.port.packets", () => PerPort(p => [
                Tagged(p.Counters.TxPackets, p, "direction", "tx"), Tagged(p.Counters.RxPackets, p, "direction", "rx")]),
            "{packet}", "Frames a port sent into the switch (direction=tx) or the switch delivered to it (direction=rx).");
        Meter.CreateObservableCounter("vhost_virtio.port.bytes", () => PerPort(p => [
                Tagged(p.Counters.TxBytes, p, "direction", "tx"), Tagged(p.Counters.RxBytes, p, "direction", "rx")]),
            "By", "Frame bytes (without the virtio-net header) a port sent (tx) or received (rx).");
        Meter.CreateObservableCounter("vhost_virtio.port.drops", () => PerPort(p =>
                p.Counters.Drops.Select(d => Tagged(d.Value, p, "reason", Snake(d.Key)))),
            "{packet}", "Frames dropped on a port, by reason (reasons appear once they occur).");
        Meter.CreateObservableGauge("vhost_virtio.port.connected", () => PerPort(p => [Tagged(p.Connected ? 1L : 0L, p)]),
            description: "1 while a front end is connected to the port (managed devices: attached; the uplink: always).");
        Meter.CreateObservableGauge("vhost_virtio.port.link_up", () => PerPort(p => [Tagged(p.LinkUp ? 1L : 0L, p)]),
            description: "1 while the port's link is up.");
        Meter.CreateObservableGauge("vhost_virtio.port.macs_learned", () => PerPort(p => [Tagged(p.Counters.LearnedMacs, p)]),
            "{mac}", "MACs the switch has learned on the port now.");
        Meter.CreateObservableCounter("vhost_virtio.port.macs_not_learned", () => PerPort(p => [Tagged(p.Counters.MacsNotLearned, p)]),
            "{mac}", "Source MACs not learned because the port was at its --max-macs-per-port limit (the frames were still forwarded).");
        Meter.CreateObservableCounter("vhost_virtio.port.offloads", () => PerPort(p => p.Counters.Offloads is not { } o ? [] : [
                Tagged(o.PassedThrough, p, "offload", "passed_through"), Tagged(o.ChecksumsCompleted, p, "offload", "checksum_completed"),
                Tagged(o.FramesSegmented, p, "offload", "segmented")]),
            "{packet}", "Offloaded frames delivered to the port: passed on in the header, checksum completed by the switch, or cut into segments by it.");
        Meter.CreateObservableCounter("vhost_virtio.port.segments", () => PerPort(p => [Tagged(p.Counters.Offloads?.SegmentsMade ?? 0, p)]),
            "{packet}", "Segments the switch made from GSO frames for the port.");
        Meter.CreateObservableCounter("vhost_virtio.port.rejected_messages", () => Take().Rejections.Select(r =>
                new Measurement<long>(r.Count, Tag("port", r.Port), Tag("role", Role(r.Port)), Tag("reason", r.Reason))),
            "{message}", "vhost-user messages the back end refused from the port's front end, by kind (kinds appear once they occur).");
        Meter.CreateObservableCounter("vhost_virtio.switch.floods", () => Take().Status.Floods,
            "{packet}", "Frames the switch flooded to every port (broadcast, multicast, unknown destination).");
        Meter.CreateObservableCounter("vhost_virtio.switch.dropped_while_stopped", () => Take().Status.DroppedWhileStopped,
            "{packet}", "Frames dropped because their destination member was stopped (admin or migration).");
        Meter.CreateObservableGauge("vhost_virtio.switch.mac_table.entries", () => (long)Take().Status.MacTable.Count,
            "{mac}", "Entries in the switch's MAC table.");
        Meter.CreateObservableGauge("vhost_virtio.vfs", () => (long)Take().Vfs,
            "{device}", "SR-IOV members (VFs) enabled now (NumVFs).");
        Meter.CreateObservableGauge("vhost_virtio.managed_devices", () => (long)Take().ManagedDevices,
            "{device}", "Devices the owner's transport queue manages now.");
        // Read without the loops' help, so a stuck worker still shows here while the snapshot is old.
        Meter.CreateObservableGauge("vhost_virtio.worker.stuck", () => _group.Server.Workers.Workers.Select(w =>
                new Measurement<long>(w.Loop.IsStuck ? 1 : 0, Tag("worker", w.Loop.Name))),
            description: "1 while a data-path worker has not answered within its deadline (the counters then stay at their last snapshot).");
    }

    public Meter Meter { get; }

    /// <summary>Snapshots taken from the group so far (tests check one serves a whole collection).</summary>
    internal long Snapshots { get; private set; }

    private sealed record Sample(GroupStatus Status, int Vfs, int ManagedDevices, IReadOnlyList<(string Port, string Reason, long Count)> Rejections);

    private static readonly Sample Empty = new(new GroupStatus([], [], 0), 0, 0, []);

    /// <summary>The current snapshot: the cached one while young, else a new one from the group.</summary>
    private Sample Take()
    {
        lock (_gate)
        {
            long now = System.Diagnostics.Stopwatch.GetTimestamp();
            if (_last != null && now - _takenAt < _maxAgeTicks)
                return _last;
            _last = Collect() ?? _last ?? Empty;
            _takenAt = now;
            return _last;
        }
    }

    /// <summary>A fresh snapshot, or null when the group cannot answer (stuck loop, shutting down).</summary>
    private Sample? Collect()
    {
        // A stuck loop would hold every collection for its whole Invoke deadline; the last snapshot stands in.
        if (_group.DataPath.Loop.IsStuck || _group.Server.Control.IsStuck)
            return null;
        try
        {
            var (status, vfs, managed) = _group.DataPath.Loop.Invoke(() => (_group.Status(), _group.NumVfs, _group.Transport?.Devices.Count ?? 0));
            // Rejection counts belong to the control loop, which handles the messages.
            var rejections = _group.Server.Control.Invoke(() => _group.AllDevices
                .SelectMany(m => Enum.GetValues<MessageErrorKind>().Select(k => (m.Name, Snake(k.ToString()), m.Endpoint.Backend.Rejections(k))))
                .Where(r => r.Item3 > 0).ToList());
            Snapshots++;
            return new Sample(status, vfs, managed, rejections);
        }
        catch (Exception e) when (e is LoopStuckException or ObjectDisposedException or InvalidOperationException)
        {
            return null;
        }
    }

    private IEnumerable<Measurement<long>> PerPort(Func<PortStatus, IEnumerable<Measurement<long>>> measure) =>
        Take().Status.Ports.SelectMany(measure);

    private static Measurement<long> Tagged(long value, PortStatus port) =>
        new(value, Tag("port", port.Name), Tag("role", Role(port.Name)));

    private static Measurement<long> Tagged(long value, PortStatus port, string key, string tag) =>
        new(value, Tag("port", port.Name), Tag("role", Role(port.Name)), Tag(key, tag));

    private static KeyValuePair<string, object?> Tag(string key, string value) => new(key, value);

    /// <summary>What a port is, from its name: the owner (pf), a VF (vfN), a managed device (vdevN) or the TAP uplink.</summary>
    internal static string Role(string port) =>
        port == "pf" ? "owner"
        : port.StartsWith("uplink:", StringComparison.Ordinal) ? "uplink"
        : port.StartsWith("vdev", StringComparison.Ordinal) ? "managed"
        : "vf";

    /// <summary>NoRxBuffer → no_rx_buffer: tag values in the style of the metric names.</summary>
    internal static string Snake(string name)
    {
        var text = new System.Text.StringBuilder(name.Length + 4);
        for (int i = 0; i < name.Length; i++)
        {
            char c = name[i];
            if (char.IsUpper(c) && i > 0 && (char.IsLower(name[i - 1]) || (i + 1 < name.Length && char.IsLower(name[i + 1]))))
                text.Append('_');
            text.Append(char.ToLowerInvariant(c));
        }
        return text.ToString();
    }

    public void Dispose() => Meter.Dispose();
}
