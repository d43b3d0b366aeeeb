using System.Globalization;
using System.Text.RegularExpressions;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Two hosts joined the way docs/multi-host.md tells operators to: each "host" is a network namespace
/// the test creates, running its own daemon with a TAP uplink; in each, a Linux bridge holds that TAP
/// and a kernel VXLAN port whose remote is the other namespace. The underlay is one veth pair between
/// the two namespaces with a /30 on each end and no other route, so no packet can go anywhere else.
/// A QEMU guest on each daemon's VF pings the other. Deadlines are minutes: QEMU emulates the CPU,
/// and two guests share this machine's cores.
/// </summary>
[Trait("tier", "qemu")]
public sealed partial class GuestVxlanTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan StartDeadline = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan ScriptDeadline = TimeSpan.FromMinutes(10);
    private static readonly TimeSpan StatusDeadline = TimeSpan.FromSeconds(60);
    private const int Pings = 10;
    // Inside each namespace the names are private, so they can be fixed.
    private const string Tap = "vuvup0", Bridge = "br0", Vxlan = "vx0", Underlay = "ul0";
    private const string UnderlayA = "10.99.0.1", UnderlayB = "10.99.0.2";
    private const string GuestIpA = "10.10.0.1", GuestIpB = "10.10.0.2";
    // Every daemon numbers its VFs' MACs from the same base, so two hosts' VF1 would collide on the
    // one segment the tunnel makes: host B's owner gives its VF1 another MAC, as the guide says.
    private const string MacA = "02:56:56:00:00:01", MacB = "02:56:56:00:01:01";

    // Two TCG guests booting at once on a loaded machine: the kernel's check that the IO-APIC timer
    // ticks can miss and panic ("IO-APIC + timer doesn't work"); the check proves nothing here.
    private const string NoTimerCheck = "no_timer_check";

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-vxlan-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>
    /// The two MTU choices of docs/multi-host.md, each tested at its limit: VXLAN adds 50 bytes, so
    /// guests at 1450 fill a 1500 underlay exactly, and guests at 9000 fill a 9050 one. The pings are
    /// the largest that fit (MTU less 28 bytes of IP and ICMP header), so a byte of overhead
    /// unaccounted for, or a hop with a smaller MTU (the TAP once stayed at 1500), loses them all:
    /// a bridge drops what does not fit its outgoing port without a word.
    /// </summary>
    [Theory]
    [InlineData(1500, 1450)]
    [InlineData(9050, 9000)]
    public void Guests_on_two_daemons_ping_each_other_through_a_kernel_vxlan_tunnel_between_their_uplinks(int underlayMtu, int guestMtu)
    {
        // Disposed last (declared first): the namespaces take the veth, bridges and VXLAN ports with them.
        using var hostA = NetNamespace.Create("vuvxa");
        using var hostB = NetNamespace.Create("vuvxb");
        JoinUnderlay(hostA, hostB, underlayMtu);

        string socketsA = Path.Combine(_dir, "a"), socketsB = Path.Combine(_dir, "b");
        string mtu = guestMtu.ToString(CultureInfo.InvariantCulture);
        // Each daemon runs inside its namespace, so the TAP it creates is born there; its sockets are
        // files, which QEMU in the root namespace reaches all the same.
        using var daemonA = DaemonProcess.Start(["serve", "--socket-dir", socketsA, "--vfs", "1", "--mtu", mtu, "--uplink", Tap], launcher: hostA.Launcher);
        // Host B numbers its members from another base, so its VF1's MAC is not host A's VF1's.
        using var daemonB = DaemonProcess.Start(["serve", "--socket-dir", socketsB, "--vfs", "1", "--mtu", mtu, "--uplink", Tap, "--mac-base", "02:56:56:00:01:00"],
            launcher: hostB.Launcher);
        foreach (var (host, daemon, other) in new[] { (hostA, daemonA, UnderlayB), (hostB, daemonB, UnderlayA) })
        {
            daemon.WaitUntil(() => host.TryRun("ip", "link", "show", Tap), StartDeadline, $"the uplink TAP in {host.Name}");
            Overlay(host, remote: other);
            // The kernel sizes the VXLAN port from its underlay device: 50 bytes less.
            Assert.Equal(guestMtu, Mtu(host, Vxlan));
            // And the daemon gave its TAP the devices' MTU, so the bridge forwards full frames into it.
            Assert.Equal(guestMtu, Mtu(host, Tap));
        }

        int size = guestMtu - 28;
        var before = new[] { Counters(hostA), Counters(hostB) };
        // QEMU tells its guest the MTU itself (host_mtu); it does not read the daemon's.
        using var guestB = QemuGuest.Start(new GuestOptions
        {
            Name = "host-b",
            Memory = "256M",
            Nics = [new GuestNic(Path.Combine(socketsB, "vf1.sock"), MacB, DeviceOptions: ",host_mtu=" + mtu)],
            ExtraKernelArgs = NoTimerCheck,
            TestScript = GuestScripts.PingPartner(MacB, GuestIpB, seconds: 900),
            ConsoleLogPath = Path.Combine(_dir, "console-b.log"),
            Log = output.WriteLine,
        });
        using var guestA = QemuGuest.Start(new GuestOptions
        {
            Name = "host-a",
            Memory = "256M",
            Nics = [new GuestNic(Path.Combine(socketsA, "vf1.sock"), MacA, DeviceOptions: ",host_mtu=" + mtu)],
            ExtraKernelArgs = NoTimerCheck,
            // Both guests boot at once under TCG: A waits (up to the limit) until B answers, then measures.
            TestScript = PingAcross(MacA, GuestIpA, GuestIpB, size),
            ConsoleLogPath = Path.Combine(_dir, "console-a.log"),
            Log = output.WriteLine,
        });

        int status = guestA.WaitForTestExit(ScriptDeadline);
        var report = GuestScripts.Parse(guestA.Lines);
        var ping = Assert.Single(report.Pings);
        output.WriteLine($"ping {ping.From} -> {ping.To}, {size} bytes of data: {ping.Received}/{ping.Transmitted}, rtt min/avg/max {ping.MinMs}/{ping.AvgMs}/{ping.MaxMs} ms");
        Assert.True(status == 0 && ping.Transmitted == Pings && ping.Received == Pings,
            $"script exit {status}, {ping}.\n{guestA.Describe()}\n{guestB.Describe()}\nA:\n{daemonA.Output}\nB:\n{daemonB.Output}");
        Assert.Contains(guestA.Lines, l => l.Contains($"GUEST-MTU {guestMtu}", StringComparison.Ordinal)); // host_mtu reached the guest

        // The pings crossed the tunnel both ways: each VXLAN port sent and received at least one
        // frame per echo (ARP comes on top), and so did the veth below it.
        var after = new[] { Counters(hostA), Counters(hostB) };
        foreach (var (host, i) in new[] { (hostA, 0), (hostB, 1) })
        {
            var (b, a) = (before[i], after[i]);
            output.WriteLine($"{host.Name}: {Vxlan} tx +{a.VxlanTx - b.VxlanTx} rx +{a.VxlanRx - b.VxlanRx}; {Underlay} tx +{a.UnderlayTx - b.UnderlayTx} rx +{a.UnderlayRx - b.UnderlayRx}");
            Assert.True(a.VxlanTx - b.VxlanTx >= Pings && a.VxlanRx - b.VxlanRx >= Pings, $"{host.Name}: {b} -> {a}");
            Assert.True(a.UnderlayTx - b.UnderlayTx >= a.VxlanTx - b.VxlanTx && a.UnderlayRx - b.UnderlayRx >= a.VxlanRx - b.VxlanRx, $"{host.Name}: {b} -> {a}");
        }

        // Each daemon's switch took the echoes from its uplink and delivered the others into it.
        foreach (var (daemon, name) in new[] { (daemonA, "A"), (daemonB, "B") })
        {
            daemon.WaitUntil(() => UplinkCounters(daemon.Output) is { Tx: >= Pings, Rx: >= Pings }, StatusDeadline,
                $"daemon {name}'s status to show the uplink carrying {Pings} frames each way");
            output.WriteLine($"daemon {name}: {LastStatus(daemon.Output)}");
        }
        Assert.DoesNotContain(guestA.Lines, l => l.Contains("GUEST-ERROR", StringComparison.Ordinal));
    }

    /// <summary>
    /// The guest that measures: its NIC gets <paramref name="ip"/>, it prints its MTU, waits until
    /// <paramref name="peer"/> answers (the two guests boot at once), then sends <see cref="Pings"/>
    /// pings of <paramref name="size"/> data bytes and prints PING-RESULT and IFSTAT.
    /// </summary>
    private static string PingAcross(string mac, string ip, string peer, int size) => $$"""
        mac={{mac.ToLowerInvariant()}}; ip={{ip}}; peer={{peer}}
        {{GuestScripts.ShellFunctions}}
        a=$(find_if $mac) || { echo "GUEST-ERROR no interface with MAC $mac"; exit 2; }
        echo 1 > /proc/sys/net/ipv6/conf/$a/disable_ipv6 2>/dev/null
        must ip addr add $ip/24 dev $a
        must ip link set $a up
        wait_carrier $a 30
        report_link $mac $a
        echo "GUEST-MTU $(cat /sys/class/net/$a/mtu)"
        n=0
        until ping -c 1 -W 1 $peer >/dev/null 2>&1; do
            n=$((n + 1))
            [ $n -ge 400 ] && { echo "GUEST-ERROR $peer never answered"; exit 4; }
        done
        ping -c {{Pings}} -i 0.2 -W 2 -w 20 -s {{size}} $peer > /ping.log 2>&1
        cat /ping.log
        tx=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /ping.log)
        rx=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /ping.log)
        rtt=$(sed -n 's|^round-trip min/avg/max = \([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\) ms.*|min=\1 avg=\2 max=\3|p' /ping.log)
        echo "PING-RESULT from=$ip to=$peer transmitted=${tx:-0} received=${rx:-0} $rtt"
        report_stats $mac $a
        [ "${rx:-0}" -gt 0 ]

        """;

    /// <summary>
    /// One veth pair between the namespaces, a /30 on each end, no default route: the underlay. IPv6
    /// is off in both, so the interfaces carry the test's traffic and none of their own.
    /// </summary>
    private static void JoinUnderlay(NetNamespace a, NetNamespace b, int mtu)
    {
        foreach (var ns in new[] { a, b })
            ns.Run("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
        a.Run("ip", "link", "add", Underlay, "mtu", mtu.ToString(CultureInfo.InvariantCulture), "type", "veth",
            "peer", "name", Underlay, "mtu", mtu.ToString(CultureInfo.InvariantCulture), "netns", b.Name);
        foreach (var (ns, ip) in new[] { (a, UnderlayA), (b, UnderlayB) })
        {
            ns.Run("ip", "addr", "add", ip + "/30", "dev", Underlay);
            ns.Run("ip", "link", "set", Underlay, "up");
        }
    }

    /// <summary>The commands of docs/multi-host.md: a bridge holding the daemon's TAP and a VXLAN port to the other host.</summary>
    private static void Overlay(NetNamespace ns, string remote)
    {
        ns.Run("ip", "link", "add", Vxlan, "type", "vxlan", "id", "42", "remote", remote, "dstport", "4789", "dev", Underlay);
        ns.Run("ip", "link", "add", Bridge, "type", "bridge");
        ns.Run("ip", "link", "set", Vxlan, "master", Bridge, "up");
        ns.Run("ip", "link", "set", Tap, "master", Bridge, "up");
        ns.Run("ip", "link", "set", Bridge, "up");
    }

    private sealed record HostCounters(long VxlanTx, long VxlanRx, long UnderlayTx, long UnderlayRx);

    private static HostCounters Counters(NetNamespace ns) => new(
        Stat(ns, Vxlan, "tx_packets"), Stat(ns, Vxlan, "rx_packets"), Stat(ns, Underlay, "tx_packets"), Stat(ns, Underlay, "rx_packets"));

    // `ip netns exec` mounts the namespace's own /sys, so these are the namespace's interfaces.
    private static long Stat(NetNamespace ns, string device, string counter) =>
        long.Parse(ns.Run("cat", $"/sys/class/net/{device}/statistics/{counter}").Trim(), CultureInfo.InvariantCulture);

    private static int Mtu(NetNamespace ns, string device) =>
        int.Parse(ns.Run("cat", $"/sys/class/net/{device}/mtu").Trim(), CultureInfo.InvariantCulture);

    private static string LastStatus(string log) =>
        log.Split('\n').LastOrDefault(l => l.Contains("status:", StringComparison.Ordinal) && l.Contains("uplink:", StringComparison.Ordinal)) ?? "";

    /// <summary>The uplink port's counters in the daemon's last status line: tx is what the switch took from it, rx what it delivered to it.</summary>
    private static (long Tx, long Rx) UplinkCounters(string log)
    {
        var m = UplinkStatus().Match(LastStatus(log));
        return m.Success
            ? (long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), long.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture))
            : (0, 0);
    }

    [GeneratedRegex(@"uplink:\S+ \w+ tx=(\d+) rx=(\d+)")]
    private static partial Regex UplinkStatus();
}
