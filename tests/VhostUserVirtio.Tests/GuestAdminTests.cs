using System.Text.RegularExpressions;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The owner-driver CLI changes a VF under a running Linux guest, and the guest sees the effect.
/// QEMU 7.2 does not pass a vhost-user back end's config change on to a net device, so the guest
/// observes the link through its traffic: while a member's link is down the switch drops its frames
/// both ways.
/// </summary>
[Trait("tier", "qemu")]
public sealed partial class GuestAdminTests(ITestOutputHelper output) : IDisposable
{
    // VF1's and VF2's own MACs: an untrusted VF may send only from its own.
    private const string MacA = "02:56:56:00:00:01", MacB = "02:56:56:00:00:02";
    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-ga-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [GeneratedRegex(@"^PING-(OK|FAIL) (\d+)$")]
    private static partial Regex Attempt();

    [Fact]
    public void Cli_link_down_on_a_vf_stops_the_guests_traffic_and_link_up_restores_it()
    {
        using var backend = new GroupBackend(vfs: 2);
        // After one ordinary ping, the guest pings once per attempt and says how each went.
        const string loop = """
            n=0
            while [ $n -lt 400 ]; do
                if ping -c 1 -W 1 -I $ip_a $ip_b >/dev/null 2>&1; then echo "PING-OK $n"; else echo "PING-FAIL $n"; fi
                n=$((n + 1)); usleep 200000
            done
            """;
        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "cli-link",
            Nics = [new GuestNic(backend.Socket(1), MacA), new GuestNic(backend.Socket(2), MacB)],
            TestScript = GuestScripts.PingPair(MacA, MacB, count: 1, bothWays: false, then: loop),
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        guest.WaitForBoot(TimeSpan.FromMinutes(3));
        string pf = backend.Socket(0);

        int okBefore = WaitFor(guest, "OK", after: -1, count: 3);
        RunCli(pf, "vf", "2", "link", "down");
        Assert.False(backend.Member(2).Device.LinkUp);
        int failed = WaitFor(guest, "FAIL", after: okBefore, count: 2);
        RunCli(pf, "vf", "2", "link", "up");
        int okAgain = WaitFor(guest, "OK", after: failed, count: 2);
        output.WriteLine($"ping attempts: ok up to #{okBefore}, failing by #{failed}, ok again by #{okAgain}");

        // The guest's frames on the downed VF were dropped by the switch, counted as LinkDown.
        Assert.True(backend.Member(2).Device.Counters.Drops(VhostUserVirtio.Devices.Switch.DropReason.LinkDown) > 0);
    }

    /// <summary>Waits for <paramref name="count"/> attempts with this outcome numbered after <paramref name="after"/>; returns the last one's number.</summary>
    private int WaitFor(QemuGuest guest, string outcome, int after, int count)
    {
        int seen = 0, last = -1;
        var line = guest.TryWaitForLine(l =>
        {
            var m = Attempt().Match(l);
            if (!m.Success || m.Groups[1].Value != outcome || int.Parse(m.Groups[2].Value) <= after)
                return false;
            last = int.Parse(m.Groups[2].Value);
            return ++seen >= count;
        }, TimeSpan.FromMinutes(2));
        Assert.True(line != null, $"no {count} PING-{outcome} attempts after #{after}. {guest.Describe()}");
        return last;
    }

    private void RunCli(string pf, params string[] args)
    {
        using var cli = DaemonProcess.Run(["admin", "--socket", pf, .. args]);
        output.WriteLine($"vhost-virtio admin {string.Join(' ', args)}: exit {cli.ExitCode}: {cli.StandardOutput.Trim()}");
        Assert.True(cli.ExitCode == 0, cli.Output);
        Assert.Contains("member 2: done", cli.StandardOutput);
    }
}
