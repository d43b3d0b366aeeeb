using System.Text.RegularExpressions;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Memory hot-plug under a real Linux guest on two VFs of the daemon: QEMU boots with room for
/// DIMMs (-m 256M,slots=2,maxmem=1G, memfd memory), the guest pings between its NICs, then a
/// shared memfd DIMM is plugged through QMP (object-add + device_add pc-dimm). QEMU hands the new
/// memory to each back end with ADD_MEM_REG, the guest onlines it as kernel memory, and pings carry
/// on. The DIMM lands above 4 GiB, in ZONE_NORMAL, which the kernel's allocator prefers to the
/// boot memory (all in DMA32 at this size): buffers allocated after onlining, the rx refills among
/// them, come from the new memory. Deadlines are minutes: QEMU emulates the CPU.
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestMemoryHotPlugTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan StartDeadline = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan BootDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan ScriptDeadline = TimeSpan.FromMinutes(4);
    private const string MacA = "02:56:56:00:00:01", MacB = "02:56:56:00:00:02";
    private const string ReadyMarker = "MEMHP-READY", OnlineMarker = "MEMHP-ONLINE", PingMarker = "MEMHP-PING";
    private const ulong DimmBytes = 256UL << 20;

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-memhp-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void A_dimm_hot_plugged_into_a_running_guest_reaches_the_daemon_as_a_new_region_and_traffic_continues_after_onlining()
    {
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "2"]);
        daemon.WaitUntil(() => File.Exists(Path.Combine(_dir, "vf2.sock")) && daemon.Output.Contains("ready:", StringComparison.Ordinal),
            StartDeadline, "the group's sockets");
        string qmpSocket = Path.Combine(_dir, "qmp.sock");
        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "memhp",
            Memory = "256M",
            MemoryHotPlug = "slots=2,maxmem=1G",
            // Any block the kernel leaves offline is onlined by the script; this makes it automatic.
            ExtraKernelArgs = "memhp_default_state=online_kernel",
            Nics = [new GuestNic(Path.Combine(_dir, "vf1.sock"), MacA), new GuestNic(Path.Combine(_dir, "vf2.sock"), MacB)],
            TestScript = GuestScripts.PingPair(MacA, MacB, count: 3, intervalSeconds: 0.3, bothWays: false, then: AfterFirstPing),
            QmpSocket = qmpSocket,
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        using var qmp = QmpClient.Connect(qmpSocket, StartDeadline);
        guest.WaitForLine(ReadyMarker, BootDeadline);
        var before = GuestScripts.Parse(guest.Lines);
        Assert.True(before.Pings.Single().Received > 0, $"no ping before the hot-plug. {guest.Describe()}\ndaemon:\n{daemon.Output}");

        int logFrom = daemon.OutputLength;
        qmp.Execute("object-add", new Dictionary<string, object>
        {
            ["qom-type"] = "memory-backend-memfd",
            ["id"] = "hmem0",
            ["size"] = DimmBytes,
            ["share"] = true,
        });
        qmp.Execute("device_add", new Dictionary<string, object> { ["driver"] = "pc-dimm", ["id"] = "dimm0", ["memdev"] = "hmem0" });

        // Each NIC is its own vhost-user device: both VFs get the DIMM as one more region (ADD_MEM_REG).
        var added = new Regex(@"(vf[12]): memory region added: gpa 0x([0-9a-f]+) size 0x([0-9a-f]+)");
        daemon.WaitUntil(() => added.Matches(daemon.OutputFrom(logFrom)).Select(m => m.Groups[1].Value).Distinct().Count() == 2,
            StartDeadline, "ADD_MEM_REG of the DIMM on vf1 and vf2");
        foreach (Match m in added.Matches(daemon.OutputFrom(logFrom)))
        {
            output.WriteLine(m.Value);
            Assert.True(Convert.ToUInt64(m.Groups[2].Value, 16) >= 1UL << 32, $"the DIMM should sit above 4 GiB: {m.Value}");
        }
        Assert.Contains(added.Matches(daemon.OutputFrom(logFrom)), m => Convert.ToUInt64(m.Groups[3].Value, 16) == DimmBytes);

        var online = guest.WaitForLine(OnlineMarker, ScriptDeadline);
        output.WriteLine(online);
        int status = guest.WaitForTestExit(ScriptDeadline);
        var after = guest.Lines.Last(l => l.StartsWith(PingMarker, StringComparison.Ordinal));
        output.WriteLine(after);
        Assert.True(status == 0, $"guest script exit {status}. {guest.Describe()}\ndaemon:\n{daemon.Output}");
        var counts = Regex.Match(after, @"transmitted=(\d+) received=(\d+)");
        Assert.True(int.Parse(counts.Groups[2].Value) >= 15, $"large pings after onlining mostly lost: {after}");
        // The DIMM became ZONE_NORMAL (the boot memory is all DMA32): the zone the allocator tries first.
        var normal = Regex.Match(after, @"pages_free=(\d+) present=(\d+)");
        Assert.True(normal.Success && long.Parse(normal.Groups[2].Value) > 0, $"no ZONE_NORMAL after onlining: {after}");
        output.WriteLine($"ZONE_NORMAL (the DIMM): {long.Parse(normal.Groups[2].Value) - long.Parse(normal.Groups[1].Value)} of {normal.Groups[2].Value} pages in use");
        Assert.DoesNotContain("outside guest memory", daemon.Output, StringComparison.Ordinal);
    }

    /// <summary>
    /// The guest's part after the first ping: announce readiness, wait for new memory blocks, online
    /// any the kernel left offline, then large pings (each one fresh socket buffers and rx refills).
    /// </summary>
    private const string AfterFirstPing = """
        blocks() { ls -d /sys/devices/system/memory/memory* | wc -l; }
        before=$(blocks)
        echo "MEMHP-READY blocks=$before $(grep MemTotal /proc/meminfo)"
        n=0
        while [ "$(blocks)" -le "$before" ] && [ $n -lt 1800 ]; do usleep 100000; n=$((n + 1)); done
        for s in /sys/devices/system/memory/memory*/state; do
            [ "$(cat $s)" = offline ] && echo online_kernel > $s
        done
        echo "MEMHP-ONLINE blocks=$(blocks) offline=$(grep -l offline /sys/devices/system/memory/memory*/state | wc -l) $(grep MemTotal /proc/meminfo)"
        [ "$(blocks)" -gt "$before" ] || { echo "GUEST-ERROR no new memory blocks"; status=1; }
        big=$(ping -c 20 -i 0.2 -s 1400 -W 2 -w 40 -I $ip_a $ip_b 2>&1); echo "$big"
        tx=$(echo "$big" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')
        rx=$(echo "$big" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
        normal=$(sed -n '/zone *Normal/,/present/p' /proc/zoneinfo | sed -n 's/^ *\(pages free\|present\) *\([0-9]*\)/\1=\2/p' | tr ' \n' '_ ')
        echo "MEMHP-PING transmitted=${tx:-0} received=${rx:-0} normal: $normal"
        [ "${rx:-0}" -gt 0 ] || status=1
        """;
}
