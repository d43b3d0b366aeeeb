using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The installed unit under a real systemd: scripts/service/try-under-systemd.sh boots this machine's
/// /usr in a throwaway systemd-nspawn container (systemd as its PID 1, its own network) and drives
/// vhost-virtio.service there with systemctl. Proves what `systemd-analyze verify` cannot: the
/// Type=notify start completes (READY=1 accepted), the STATUS= line shows, the hardening lets the
/// daemon run as its dynamic user, a keeper-run unit's daemon child may notify (NotifyAccess=all)
/// and is restarted by the keeper after SIGKILL with the unit still active, and stops end in success.
/// </summary>
[Trait("tier", "daemon")]
public sealed class ServiceUnitTests
{
    [Fact]
    public void The_unit_starts_when_ready_survives_a_killed_daemon_under_the_keeper_and_stops_cleanly_under_systemd()
    {
        var (code, report) = InstalledService.Run("bash",
            [Path.Combine(TestPmd.RepositoryRoot(), "scripts", "service", "try-under-systemd.sh")], TimeSpan.FromMinutes(25));
        Assert.True(code == 0, $"try-under-systemd.sh exited {code}:\n{report}");

        var plain = Section(report, "== systemctl start vhost-virtio (serve)", "== systemctl start vhost-virtio (keep");
        Assert.Contains("start: exit 0", plain);
        Assert.Contains("Active: active (running)", plain);
        Assert.Contains("Status: \"serving owner and 2 VF(s) on /run/vhost-virtio\"", plain);
        Assert.Contains("vhost-virtio vhost-virtio 0", plain); // the sockets belong to the dynamic user
        Assert.Contains("stop: exit 0", plain);

        var kept = Section(report, "== systemctl start vhost-virtio (keep", "== journalctl");
        Assert.Contains("start: exit 0", kept);
        Assert.Contains("Status: \"serving owner and 3 VF(s) on /run/vhost-virtio\"", kept);
        Assert.Contains("daemon started (pid", kept);
        Assert.Contains(", start 2)", kept);          // the keeper restarted the killed daemon
        Assert.Contains("Active: active (running)", kept); // and systemd saw no failure
        Assert.Contains("Result=success", kept);
        Assert.Contains("ExecMainStatus=0", kept);
    }

    private static string Section(string report, string from, string to)
    {
        int start = report.IndexOf(from, StringComparison.Ordinal);
        Assert.True(start >= 0, $"no '{from}' in:\n{report}");
        int end = report.IndexOf(to, start, StringComparison.Ordinal);
        return end < 0 ? report[start..] : report[start..end];
    }
}
