using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The guest harness itself (QemuGuest, the prepared image, the ping script and its parser),
/// proven with QEMU's own networking so it does not depend on any back end of this repository.
/// Deadlines are minutes: QEMU emulates the CPU (no KVM) and the machine may be busy.
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestHarnessTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan BootDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan ScriptDeadline = TimeSpan.FromMinutes(5);

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-gh-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void Two_NICs_wired_to_each_other_ping_both_ways_inside_one_guest()
    {
        const string macA = "52:54:00:12:34:01", macB = "52:54:00:12:34:02";
        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "hub-pair",
            // Two ports of one QEMU hub: whatever one NIC sends, the other receives.
            QemuNics = [QemuNic.Hub(macA), QemuNic.Hub(macB)],
            TestScript = GuestScripts.PingPair(macA, macB, count: 5, intervalSeconds: 0.2),
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });

        guest.WaitForBoot(BootDeadline);
        var status = guest.WaitForTestExit(ScriptDeadline);
        var report = GuestScripts.Parse(guest.Lines);
        output.WriteLine(guest.Output);

        Assert.True(status == 0, $"script exit status {status}. {guest.Describe()}");
        Assert.All(new[] { macA, macB }, mac => Assert.True(report.LinkOf(mac).Up, $"{mac} link down. {guest.Describe()}"));
        Assert.Equal(2, report.Pings.Count);
        foreach (var ping in report.Pings)
        {
            Assert.True(ping.Transmitted == 5 && ping.Received > 0, $"{ping}. {guest.Describe()}");
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"ping {ping.From} -> {ping.To}: {ping.Received}/{ping.Transmitted}, rtt avg {ping.AvgMs} ms"));
        }
        // Everything crossed the wire: each NIC sent its requests and the replies to the other's
        // answered requests, and received its replies and the other's answered requests.
        var (ab, ba) = (report.Pings[0], report.Pings[1]);
        foreach (var (mac, mine, theirs) in new[] { (macA, ab, ba), (macB, ba, ab) })
        {
            var stats = report.StatsOf(mac);
            Assert.True(stats.TxPackets >= mine.Transmitted + theirs.Received, $"{stats}. {guest.Describe()}");
            Assert.True(stats.RxPackets >= mine.Received + theirs.Received, $"{stats}. {guest.Describe()}");
        }
        Assert.Equal(0, guest.ExitCode);
        Assert.True(File.ReadAllText(Path.Combine(_dir, "console.log")).Contains(QemuGuest.BootedMarker, StringComparison.Ordinal));
    }

    [Fact]
    public void A_guest_still_running_at_Dispose_is_killed()
    {
        int pid;
        string tempDir;
        using (var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "sleeper",
            TestScript = "echo \"FILE $(cat /etc/greeting)\"\nsleep 600\n",
            Files = new Dictionary<string, string> { ["/etc/greeting"] = "hello" },
            Log = output.WriteLine,
        }))
        {
            pid = guest.ProcessId;
            tempDir = guest.TempDirectory;
            var match = guest.WaitForLine(new Regex(@"FILE (\w+)"), BootDeadline);
            Assert.Equal("hello", match.Groups[1].Value);
            Assert.Null(guest.TryWaitForLine(l => l.Contains(QemuGuest.TestExitMarker, StringComparison.Ordinal), TimeSpan.FromSeconds(1)));
        }
        Assert.False(IsRunning(pid), $"QEMU {pid} still running after Dispose");
        Assert.False(Directory.Exists(tempDir), "temporary folder left behind");
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException) { return false; } // no such process
    }

    [Fact]
    public void A_QEMU_that_exits_early_fails_the_wait_at_once_and_Dispose_cleans_up()
    {
        var guest = QemuGuest.Start(new GuestOptions { Name = "bad-args", ExtraQemuArgs = ["-no-such-option"], Log = output.WriteLine });
        try
        {
            var failure = Assert.ThrowsAny<Exception>(() => guest.WaitForBoot(BootDeadline));
            Assert.Contains("QEMU exited with code 1", failure.Message, StringComparison.Ordinal);
            Assert.Contains("-no-such-option", failure.Message, StringComparison.Ordinal); // QEMU's stderr is in the text
        }
        finally
        {
            guest.Dispose();
        }
        Assert.False(Directory.Exists(guest.TempDirectory), "temporary folder left behind");
    }

    [Fact]
    public void Arguments_follow_the_documented_command_line()
    {
        var args = QemuGuest.BuildArguments(new GuestOptions
        {
            Nics =
            [
                new GuestNic("/s/vf1.sock", "52:54:00:00:00:01"),
                new GuestNic("/s/a,b.sock", "52:54:00:00:00:02", ServerMode: true),
                new GuestNic("/s/vf3.sock", "52:54:00:00:00:03", ReconnectSeconds: 1),
            ],
            QemuNics = [QemuNic.Hub("52:54:00:00:00:04")],
            ExtraKernelArgs = "loglevel=7",
        }, "/k", "/i");
        var line = string.Join(' ', args);

        Assert.Contains("-object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem", line, StringComparison.Ordinal);
        Assert.Contains("-chardev socket,id=c0,path=/s/vf1.sock -netdev vhost-user,id=n0,chardev=c0,queues=1 -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,vectors=0,romfile=", line, StringComparison.Ordinal);
        Assert.Contains("socket,id=c1,path=/s/a,,b.sock,server=on,wait=off", args);
        Assert.Contains("socket,id=c2,path=/s/vf3.sock,reconnect=1", args);
        Assert.Contains("-netdev hubport,hubid=0,id=q0 -device virtio-net-pci,netdev=q0,mac=52:54:00:00:00:04,vectors=0,romfile=", line, StringComparison.Ordinal);
        Assert.Equal("console=ttyS0 panic=-1 quiet loglevel=7", args[args.ToList().IndexOf("-append") + 1]);

        var noMsi = QemuGuest.BuildArguments(new GuestOptions { Nics = [new GuestNic("/s", "52:54:00:00:00:01")], Msix = MsixWorkaround.KernelNoMsi }, "/k", "/i");
        Assert.Contains("console=ttyS0 panic=-1 quiet pci=nomsi", noMsi);
        Assert.Contains("virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,romfile=", noMsi);

        Assert.Throws<ArgumentException>(() => QemuGuest.BuildArguments(
            new GuestOptions { Nics = [new GuestNic("/s", "52:54:00:00:00:01", ServerMode: true, ReconnectSeconds: 1)] }, "/k", "/i"));
    }

    [Fact]
    public void Result_lines_parse_even_with_console_noise_around_them()
    {
        var report = GuestScripts.Parse(
        [
            "LINK 52:54:00:12:34:01 up if=eth0 operstate=up",
            "[    5.1] virtio_net virtio1: some message LINK 52:54:00:12:34:02 down if=eth1 operstate=down",
            "PING-RESULT from=10.0.0.1 to=10.0.0.2 transmitted=5 received=4 min=0.829 avg=1.471 max=2.121",
            "PING-RESULT from=10.0.0.2 to=10.0.0.1 transmitted=5 received=0 ",
            "IFSTAT 52:54:00:12:34:01 tx=12 rx=11 tx_bytes=1000 rx_bytes=900 rx_dropped=0 tx_dropped=0 if=eth0",
            "64 bytes from 10.0.0.2: seq=0 ttl=64 time=16.800 ms",
        ]);

        Assert.True(report.LinkOf("52:54:00:12:34:01").Up);
        Assert.False(report.LinkOf("52:54:00:12:34:02").Up);
        Assert.Equal(new GuestScripts.PingResult("10.0.0.1", "10.0.0.2", 5, 4, 0.829, 1.471, 2.121), report.Pings[0]);
        Assert.Equal(new GuestScripts.PingResult("10.0.0.2", "10.0.0.1", 5, 0, null, null, null), report.Pings[1]);
        var stats = report.StatsOf("52:54:00:12:34:01");
        Assert.Equal((12L, 11L, "eth0"), (stats.TxPackets, stats.RxPackets, stats.Interface));
        Assert.Throws<InvalidOperationException>(() => report.StatsOf("52:54:00:12:34:02"));
    }

    [Fact]
    public void Cpio_archive_has_aligned_newc_entries_and_a_trailer()
    {
        var archive = Cpio.Create([("/test.sh", "echo hi\n"u8.ToArray(), 0x1ED), ("/etc/x/data", [1, 2, 3], 0x1A4)]);
        var text = System.Text.Encoding.ASCII.GetString(archive);

        Assert.Equal(0, archive.Length % 4);
        Assert.StartsWith("070701", text, StringComparison.Ordinal);
        // test.sh, then the parent folders etc and etc/x, then the file, then the trailer.
        Assert.Equal(5, text.Split("070701").Length - 1);
        Assert.Contains("etc/x\0", text, StringComparison.Ordinal);
        Assert.Contains("TRAILER!!!\0", text, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => Cpio.Create([("/../x", [], 0)]));
    }
}
