using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A back-end handover under a real Linux guest: the guest's VF moves from one daemon to another
/// (`vhost-virtio migrate-member`) while the guest pings a host in a network namespace the test owns;
/// QEMU reconnects to the same socket path and the guest never restarts. Both daemons run inside the
/// namespace with a TAP uplink, and the namespace bridges the two TAPs, so the pinged address is
/// reachable through either daemon's switch. Deadlines are minutes: QEMU emulates the CPU.
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestHandoverTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan BootDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan ScriptDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan StartDeadline = TimeSpan.FromSeconds(60);
    // VF1's own MAC on the source; the target's VF2 has 02:56:56:00:00:02 until the parts arrive.
    private const string GuestMac = "02:56:56:00:00:01";
    private const string GuestIp = "10.0.0.1", HostIp = "10.0.0.2";
    private const int Pings = 150;
    private const double PingInterval = 0.1;

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-handover-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>
    /// The target VF starts with another MAC and, untrusted, would drop every frame the guest sends
    /// from its own: only the moved device parts (MAC, filters, trust) let the pings through after the
    /// move. The source speaks the VIRTIO 1.4 profile and the target the seed profile, so the stream
    /// crosses both. The source's shutdown afterwards leaves the socket path, now the target's, alone.
    /// </summary>
    [Fact]
    public void A_pinging_guest_keeps_running_when_its_vf_is_handed_over_to_another_daemon_and_qemu_reconnects()
    {
        using var ns = NetNamespace.Create("vuvho");
        string suffix = Guid.NewGuid().ToString("N")[..6];
        string tapA = "vuva" + suffix, tapB = "vuvb" + suffix;
        string a = Path.Combine(_dir, "a"), b = Path.Combine(_dir, "b");
        string guestSocket = Path.Combine(a, "vf1.sock");
        using var source = DaemonProcess.Start(["serve", "--socket-dir", a, "--vfs", "2", "--uplink", tapA], launcher: ns.Launcher);
        using var target = DaemonProcess.Start(["serve", "--socket-dir", b, "--vfs", "2", "--uplink", tapB, "--admin-profile", "seed"],
            launcher: ns.Launcher);
        source.WaitUntil(() => File.Exists(guestSocket), StartDeadline, "the source's sockets");
        target.WaitUntil(() => File.Exists(Path.Combine(b, "vf2.sock")), StartDeadline, "the target's sockets");
        ns.Run("ip", "link", "add", "br0", "type", "bridge");
        ns.Run("ip", "addr", "add", HostIp + "/24", "dev", "br0");
        foreach (var tap in new[] { tapA, tapB })
            ns.Run("ip", "link", "set", tap, "master", "br0", "up");
        ns.Run("ip", "link", "set", "br0", "up");

        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "handover",
            Memory = "256M",
            Nics = [new GuestNic(guestSocket, GuestMac, ReconnectSeconds: 1)],
            TestScript = GuestScripts.PingThroughMigration(GuestMac, GuestIp, HostIp, Pings, PingInterval),
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        guest.WaitForLine(GuestScripts.PingStartMarker, BootDeadline);
        // Pings before the move, so loss at the handover is told from loss at the start.
        Thread.Sleep(TimeSpan.FromSeconds(3));

        using var cli = DaemonProcess.Run("migrate-member", "--from", Path.Combine(a, "pf.sock"), "--member", "1",
            "--to", Path.Combine(b, "pf.sock"), "--to-member", "2");
        output.WriteLine(cli.Output);
        Assert.True(cli.ExitCode == 0, $"migrate-member failed:\n{cli.Output}\nsource:\n{source.Output}\ntarget:\n{target.Output}");
        Assert.Contains("target member 2: running", cli.Output, StringComparison.Ordinal); // progress on the terminal
        Assert.Contains($"{guestSocket} is served by the target now", cli.StandardOutput, StringComparison.Ordinal);

        int status = guest.WaitForTestExit(ScriptDeadline);
        var loss = GuestScripts.ParsePingLoss(guest.Lines);
        Assert.True(status == 0 && loss != null, $"script exit {status}, ping summary {loss}. {guest.Describe()}");
        int lastAnswered = Enumerable.Range(0, loss.Transmitted).Last(n => !loss.Missing.Contains(n));
        output.WriteLine($"pings: {loss.Transmitted} sent, {loss.Lost} lost, longest gap {loss.LongestGap} pings " +
            $"(~{loss.LongestGap * PingInterval:0.0} s) from seq {loss.FirstOfLongestGap}; last answered seq {lastAnswered}");
        // Pings the guest queued while its back end was away are answered late, not lost: the round
        // trip's maximum is how long the guest waited.
        output.WriteLine(guest.Lines.LastOrDefault(l => l.Contains("PING-RESULT", StringComparison.Ordinal)) ?? "no PING-RESULT");

        // QEMU came back through the same path and reached the target's VF2.
        Assert.Contains($"vf2: front end connected on {guestSocket}", target.Output, StringComparison.Ordinal);
        Assert.Contains("vf1: released", source.Output, StringComparison.Ordinal);
        // The guest kept pinging through the target to the end: the move cost a gap, not the guest.
        Assert.True(loss.FirstOfLongestGap + loss.LongestGap < lastAnswered, $"no replies after the handover: {loss}\n{guest.Describe()}");
        Assert.True(lastAnswered >= loss.Transmitted - 5, $"pings stopped being answered at seq {lastAnswered}: {loss}");
        // A reconnect takes QEMU a second (reconnect=1); the bound is generous for a shared machine.
        Assert.True(loss.LongestGap * PingInterval <= 10, $"the path was cut for {loss.LongestGap} pings: {loss}");
        Assert.DoesNotContain(guest.Lines, l => l.Contains("GUEST-ERROR", StringComparison.Ordinal));

        // The source going away leaves the path alone: it names the target's socket now.
        source.Terminate();
        Assert.True(source.WaitForExit(TimeSpan.FromSeconds(30)), "the source did not exit on SIGTERM");
        Assert.True(File.Exists(guestSocket), "the source removed the socket path it had handed over");
    }
}
