using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A real Linux guest under QEMU with its stock virtio-net driver on two of the group's VFs, pinging
/// across the built-in switch. Deadlines are minutes: QEMU emulates the CPU and the machine is shared.
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestNetworkTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan BootDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan ScriptDeadline = TimeSpan.FromMinutes(5);
    // The guest's NICs carry VF1's and VF2's own MACs, as a VMM is given them: an untrusted VF may send only from its own.
    private const string MacA = "02:56:56:00:00:01", MacB = "02:56:56:00:00:02";

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-gn-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>
    /// QEMU 7.2 under TCG crashes when the guest enables MSI-X on a vhost-user virtio-net device;
    /// both workarounds (no vectors on the device, or no MSI in the guest kernel) keep it alive.
    /// </summary>
    [Theory]
    [InlineData(MsixWorkaround.DeviceVectorsZero)]
    [InlineData(MsixWorkaround.KernelNoMsi)]
    public void Guest_pings_between_two_vfs_through_the_switch_and_counters_agree(MsixWorkaround msix)
    {
        using var backend = new GroupBackend(vfs: 2);
        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "vf-pair-" + msix,
            Msix = msix,
            Nics = [new GuestNic(backend.Socket(1), MacA), new GuestNic(backend.Socket(2), MacB)],
            TestScript = GuestScripts.PingPair(MacA, MacB, count: 10, intervalSeconds: 0.2),
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        guest.WaitForBoot(BootDeadline);
        int status = guest.WaitForTestExit(ScriptDeadline);
        var report = GuestScripts.Parse(guest.Lines);
        var ports = backend.Group.Status().Ports;
        output.WriteLine(string.Join("\n", ports));

        Assert.True(status == 0, $"script exit {status}. {guest.Describe()}");
        Assert.All(new[] { MacA, MacB }, mac => Assert.True(report.LinkOf(mac).Up, $"{mac} link down. {guest.Describe()}"));
        Assert.All(report.Pings, p => Assert.True(p.Transmitted == 10 && p.Received == 10, $"{p}. {guest.Describe()}"));
        foreach (var p in report.Pings)
            output.WriteLine($"ping {p.From} -> {p.To}: {p.Received}/{p.Transmitted}, rtt min/avg/max {p.MinMs}/{p.AvgMs}/{p.MaxMs} ms");

        // What the guest's driver sent is what the switch took from that port, and what it
        // received is what the switch delivered to it. The guest reads its counters while its
        // network still lives: a neighbour probe sent after that read, or a completion the driver
        // has not reaped yet, is counted by the switch only. So the switch may be up to two ahead,
        // never behind: a frame the guest counts but the switch does not would be a lost frame.
        foreach (var (mac, port) in new[] { (MacA, "vf1"), (MacB, "vf2") })
        {
            var guestSide = report.StatsOf(mac);
            var daemonSide = ports.Single(p => p.Name == port).Counters;
            Assert.True(daemonSide.TxPackets - guestSide.TxPackets is >= 0 and <= 2, $"{port}: guest sent {guestSide.TxPackets}, switch took {daemonSide.TxPackets}");
            Assert.True(daemonSide.RxPackets - guestSide.RxPackets is >= 0 and <= 2, $"{port}: guest received {guestSide.RxPackets}, switch delivered {daemonSide.RxPackets}");
        }
        Assert.Contains(backend.Group.Status().MacTable, e => e.Mac == MacA && e.Port == "vf1");
    }

    [Fact]
    public void Daemon_in_client_mode_reaches_a_guest_whose_qemu_listens()
    {
        string sockets = Path.Combine(_dir, "qemu-sockets");
        Directory.CreateDirectory(sockets);
        string vf1 = Path.Combine(sockets, "vf1.sock"), vf2 = Path.Combine(sockets, "vf2.sock");
        // QEMU listens (server=on,wait=off) and waits for the back end before starting the guest.
        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "qemu-listens",
            Nics = [new GuestNic(vf1, MacA, ServerMode: true), new GuestNic(vf2, MacB, ServerMode: true)],
            TestScript = GuestScripts.PingPair(MacA, MacB, count: 5, intervalSeconds: 0.2),
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        using var backend = new GroupBackend(vfs: 2, o => o with { ClientMode = true }, directory: sockets);
        guest.WaitForBoot(BootDeadline);
        int status = guest.WaitForTestExit(ScriptDeadline);
        var report = GuestScripts.Parse(guest.Lines);
        Assert.True(status == 0, $"script exit {status}. {guest.Describe()}");
        Assert.All(report.Pings, p => Assert.True(p.Received > 0, $"{p}. {guest.Describe()}"));
        Assert.True(backend.Member(1).Device.Counters.TxPackets > 0);
    }

    [Fact]
    public void Guest_sees_link_down_then_up_and_pings_again_after_the_back_end_restarts()
    {
        string sockets = Path.Combine(_dir, "sockets");
        var backend = new GroupBackend(vfs: 2, directory: sockets);
        try
        {
            // Between two rounds of pings the guest waits for the link to drop and come back.
            const string then = """
                echo PHASE1-DONE
                wait_carrier_down $a 120; report_link $mac_a $a
                wait_carrier $a 120; wait_carrier $b 120; report_link $mac_a $a
                echo PHASE2-START
                do_ping $ip_a $ip_b
                """;
            using var guest = QemuGuest.Start(new GuestOptions
            {
                Name = "reconnect",
                Nics = [new GuestNic(backend.Socket(1), MacA, ReconnectSeconds: 1), new GuestNic(backend.Socket(2), MacB, ReconnectSeconds: 1)],
                TestScript = GuestScripts.PingPair(MacA, MacB, count: 5, intervalSeconds: 0.2, bothWays: false, then: then),
                ConsoleLogPath = Path.Combine(_dir, "console.log"),
                Log = output.WriteLine,
            });
            guest.WaitForBoot(BootDeadline);
            guest.WaitForLine("PHASE1-DONE", ScriptDeadline);

            backend.Dispose();                       // the daemon goes away: QEMU sees the sockets close
            guest.WaitForLine($"LINK {MacA} down", ScriptDeadline);
            backend = new GroupBackend(vfs: 2, directory: sockets);   // and comes back on the same paths

            int status = guest.WaitForTestExit(ScriptDeadline);
            var report = GuestScripts.Parse(guest.Lines);
            Assert.True(status == 0, $"script exit {status}. {guest.Describe()}");
            Assert.Equal(2, report.Pings.Count);
            Assert.True(report.Pings[1].Received > 0, $"no replies after the restart: {report.Pings[1]}. {guest.Describe()}");
            Assert.True(backend.Member(1).Device.Counters.TxPackets > 0, "the restarted back end carried none of the pings");
        }
        finally
        {
            backend.Dispose();
        }
    }
}
