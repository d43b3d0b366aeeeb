using System.Globalization;
using System.Text.RegularExpressions;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The daemon killed with SIGKILL again and again under a running Linux guest, with the session
/// keeper (`vhost-virtio keep`) restarting it: the guest pings and streams numbered UDP datagrams
/// from one VF to the other throughout, and nothing is lost or duplicated. QEMU runs with
/// reconnect=1, as a user would, but never needs it: the keeper holds the connections.
/// </summary>
[Trait("tier", "qemu")]
public sealed partial class GuestRestartTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan BootDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan RestartDeadline = TimeSpan.FromSeconds(60);
    private const string MacA = "02:56:56:00:00:01", MacB = "02:56:56:00:00:02";
    private const int Restarts = 20;
    private const int TrafficSeconds = 75;
    // What piled up in the sender's queues while no daemon ran arrives in one burst after a restart:
    // the receiving NIC has room for it, as a loss-sensitive guest would be configured.
    private const string ReceiverRing = ",rx_queue_size=1024";

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-restart-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void A_guest_streaming_through_twenty_sigkill_restarts_loses_and_duplicates_nothing()
    {
        string sockets = Path.Combine(_dir, "sockets");
        using var keeper = DaemonProcess.Start(["keep", "--", "serve", "--vfs", "2", "--socket-dir", sockets]);
        int daemon = keeper.WaitForKeptDaemon(start: 1);
        keeper.WaitUntil(() => File.Exists(Path.Combine(sockets, "vf2.sock")), RestartDeadline, "the sockets");
        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "restart",
            Tools = true,
            Nics = [new GuestNic(Path.Combine(sockets, "vf1.sock"), MacA, ReconnectSeconds: 1),
                    new GuestNic(Path.Combine(sockets, "vf2.sock"), MacB, ReconnectSeconds: 1, DeviceOptions: ReceiverRing)],
            TestScript = GuestScripts.PingPair(MacA, MacB, count: 2, intervalSeconds: 0.2, bothWays: false,
                then: GuestScripts.TrafficThroughRestarts(TrafficSeconds)),
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        try
        {
            guest.WaitForBoot(BootDeadline);
            guest.WaitForLine(GuestScripts.TrafficStartMarker, BootDeadline);
            var trafficStart = DateTime.UtcNow;
            var kills = new List<double>();
            var random = new Random(13);
            for (int restart = 1; restart <= Restarts; restart++)
            {
                // Kills land anywhere in the data path's work: spread over 1.5-3 s of traffic each.
                Thread.Sleep(TimeSpan.FromMilliseconds(1500 + random.Next(1500)));
                kills.Add((DateTime.UtcNow - trafficStart).TotalSeconds);
                Assert.True(ProcessSignal.Send(daemon, ProcessSignal.SigKill), $"daemon {daemon} was already gone");
                daemon = keeper.WaitForKeptDaemon(start: restart + 1);
                keeper.WaitUntil(() => ResumedCount(keeper.Output) >= 2 * restart, RestartDeadline, $"both VF sessions resumed after restart {restart}");
                output.WriteLine($"restart {restart} at {kills[^1]:0.0} s: daemon {daemon} resumed both sessions");
            }

            int status = guest.WaitForTestExit(TimeSpan.FromSeconds(TrafficSeconds * 3));
            foreach (var line in guest.Lines.SkipWhile(l => !l.Contains(GuestScripts.TrafficStartMarker, StringComparison.Ordinal)))
                if (!line.Contains("PING-SEQS", StringComparison.Ordinal))
                    output.WriteLine("guest: " + line);
            var pings = GuestScripts.ParsePingLoss(guest.Lines);
            var udp = GuestScripts.ParseUdp(guest.Lines);
            int? duplicates = GuestScripts.ParsePingDuplicates(guest.Lines);
            var echoes = GuestScripts.ParseEchoCounts(guest.Lines);
            Assert.True(status == 0, $"script exit {status}. {guest.Describe()}");
            Assert.NotNull(pings);
            Assert.NotNull(udp);
            Assert.NotNull(duplicates);
            Assert.NotNull(echoes);
            // Per restart: pings busybox saw unanswered, from one kill to the next (0.1 s each, roughly).
            for (int i = 0; i < kills.Count; i++)
            {
                double from = kills[i], to = i + 1 < kills.Count ? kills[i + 1] : double.MaxValue;
                int lost = pings.Missing.Count(seq => seq * 0.1 >= from - 0.5 && seq * 0.1 < to - 0.5);
                output.WriteLine($"restart {i + 1} (at {from:0.0} s): pings lost {lost}");
            }
            output.WriteLine($"echo requests: {echoes.RequestsSent} sent, {echoes.RequestsReceived} received; replies: {echoes.RepliesSent} sent, {echoes.RepliesReceived} received");
            output.WriteLine($"busybox ping's own tally: {pings.Transmitted} sent, {pings.Received} answered, {pings.Lost} unanswered, {duplicates} duplicated; " +
                $"UDP: {udp.Packets} datagrams, {udp.Lost} lost, {udp.OutOfOrder} out of order or duplicated; {Restarts} restarts");
            var report = GuestScripts.Parse(guest.Lines);
            var a = report.StatsOf(MacA.ToLowerInvariant());
            var b = report.StatsOf(MacB.ToLowerInvariant());
            output.WriteLine($"frames: A sent {a.TxPackets}, B received {b.RxPackets}; B sent {b.TxPackets}, A received {a.RxPackets}");
            Assert.True(udp.Packets > 0, "no datagram was counted");
            // Every frame either NIC handed to its ring arrived at the other NIC exactly once (a loss
            // shows as fewer received, a frame sent twice as more)...
            Assert.Equal(a.TxPackets, b.RxPackets);
            Assert.Equal(b.TxPackets, a.RxPackets);
            // ...and so did every datagram, in order, and every echo request and reply, as the guest
            // kernel counts them. (busybox ping's own tally misses some replies that arrive after a
            // restart's pause although the kernel took them: it is reported, not asserted.)
            Assert.Equal(0, udp.Lost);
            Assert.Equal(0, udp.OutOfOrder);
            Assert.Equal(0, duplicates);
            Assert.True(echoes.RequestsSent >= pings.Transmitted, $"{echoes}");
            Assert.Equal(echoes.RequestsSent, echoes.RequestsReceived);
            Assert.Equal(echoes.RequestsReceived, echoes.RepliesSent);
            Assert.Equal(echoes.RepliesSent, echoes.RepliesReceived);
            Assert.DoesNotContain(report.Links, l => !l.Up);
        }
        finally
        {
            output.WriteLine(keeper.Output.Length > 20_000 ? keeper.Output[^20_000..] : keeper.Output);
        }
    }


    private static int ResumedCount(string log) => ResumedLine().Matches(log).Count;


    [GeneratedRegex(@"session on \S+ resumed after the restart")]
    private static partial Regex ResumedLine();
}
