using System.Text;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The daemon killed with SIGKILL while two VFs stream through it, restarted on the same sockets;
/// the front ends reconnect as QEMU's reconnect=1 does, handing their inflight buffers back. Every
/// transmit chain posted completes exactly once, and every frame arrives.
/// </summary>
[Trait("tier", "daemon")]
public sealed class InflightDaemonRestartTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);
    private const int Restarts = 4, FramesPerRound = 48, HeaderSize = NetFrontEnd.HeaderSize;

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-i-" + Guid.NewGuid().ToString("N")[..12]);

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private string[] Sockets => new[] { "pf.sock", "vf1.sock", "vf2.sock" }.Select(f => Path.Combine(_dir, f)).ToArray();

    private DaemonProcess StartDaemon()
    {
        foreach (var s in Sockets)
            File.Delete(s); // a killed daemon leaves its socket files; waiting for new ones means waiting for the new daemon
        var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "2"]);
        daemon.WaitUntil(() => Sockets.All(File.Exists) && daemon.Output.Contains("ready:"), Deadline, "the group's sockets and the ready line");
        return daemon;
    }

    private static FrontEndSession Connect(string socket) =>
        FrontEndSession.Start(socket, new FrontEndSession.Options { QueueCount = 2, QueueSize = 256, TrackInflight = true });

    private static string MacOf(FrontEndSession s) => Devices.Switch.Mac.Read(s.Connection.GetConfig(0, 6)!).ToString();

    [Fact]
    public void Chains_in_flight_when_the_daemon_is_killed_complete_exactly_once_after_it_restarts()
    {
        Directory.CreateDirectory(_dir);
        var daemon = StartDaemon();
        try
        {
            using var vf1 = Connect(Sockets[1]);
            using var vf2 = Connect(Sockets[2]);
            Assert.NotNull(vf1.Inflight);
            Assert.NotNull(vf2.Inflight);
            string src = MacOf(vf1), dst = MacOf(vf2);

            // Receive buffers for every frame of the test, posted once.
            var rxBuffers = new Dictionary<ushort, ulong>();
            for (int i = 0; i < Restarts * FramesPerRound + 16; i++)
            {
                ulong a = vf2.Ram.Allocate(2048, 64);
                rxBuffers[vf2.Queues[0].AddChain([new(a, 2048, true)])] = a;
            }
            vf2.Queues[0].Notify();

            var tx = vf1.Queues[1];
            var received = new Dictionary<int, int>();
            int posted = 0, txCompleted = 0;
            for (int round = 0; round < Restarts; round++)
            {
                for (int i = 0; i < FramesPerRound; i++, posted++)
                {
                    var frame = NetFrontEnd.Frame(dst, src, $"seq {posted:D6}");
                    ulong a = vf1.Ram.Allocate((ulong)(HeaderSize + frame.Length), 64);
                    var buf = vf1.Ram.Span(a, HeaderSize + frame.Length);
                    buf[..HeaderSize].Clear();
                    frame.CopyTo(buf[HeaderSize..]);
                    tx.AddChain([new(a, (uint)buf.Length, false)]);
                }
                tx.Notify();
                // Killed while it works on the burst: some chains done, some taken, some not yet seen.
                daemon.KillHard();
                Assert.True(daemon.WaitForExit(Deadline), "the daemon survived SIGKILL");
                int inflightTx = vf1.Inflight!.QueueRegion(1).InflightHeads().Length;
                int inflightRx = vf2.Inflight!.QueueRegion(0).InflightHeads().Length;
                ushort usedAtKill = tx.UsedIndex;
                daemon.Dispose();
                daemon = StartDaemon();
                // The receiving side first: frames resumed before its ring runs would be dropped.
                vf2.Reconnect(Sockets[2]);
                vf1.Reconnect(Sockets[1]);

                var deadline = Environment.TickCount64 + (long)Deadline.TotalMilliseconds;
                while (txCompleted < posted && Environment.TickCount64 < deadline)
                {
                    if (tx.TryGetUsed(out _, out _))
                        txCompleted++;
                    else
                        Thread.Sleep(2);
                }
                Assert.True(txCompleted == posted, $"round {round}: {txCompleted} of {posted} transmit chains completed\n{daemon.Output}");
                Drain(vf2, rxBuffers, received);
                output.WriteLine($"restart {round + 1}: tx used {usedAtKill - (ushort)(round * FramesPerRound)} of {FramesPerRound} at the kill, " +
                    $"{inflightTx} tx and {inflightRx} rx chains in flight; received so far {received.Count} distinct of {posted}");
            }

            var until = Environment.TickCount64 + 10_000;
            while (received.Count < posted && Environment.TickCount64 < until)
            {
                Drain(vf2, rxBuffers, received);
                Thread.Sleep(10);
            }
            Thread.Sleep(300); // a late duplicate would show up by now
            Drain(vf2, rxBuffers, received);
            Assert.Equal(posted, txCompleted);
            Assert.False(tx.TryGetUsed(out _, out _), "a transmit chain completed twice");
            var lost = Enumerable.Range(0, posted).Where(n => !received.ContainsKey(n)).ToList();
            var duplicated = received.Where(kv => kv.Value > 1).Select(kv => kv.Key).ToList();
            output.WriteLine($"{posted} frames over {Restarts} SIGKILL restarts: {lost.Count} lost, {duplicated.Count} duplicated");
            Assert.True(lost.Count == 0, $"{lost.Count} frames lost\n{daemon.Output}");
        }
        finally
        {
            daemon.Dispose();
        }
    }

    private static void Drain(FrontEndSession vf2, Dictionary<ushort, ulong> buffers, Dictionary<int, int> received)
    {
        while (vf2.Queues[0].TryGetUsed(out ushort id, out uint len))
        {
            var bytes = vf2.Ram.Span(buffers[id], (int)len).ToArray();
            string text = Encoding.ASCII.GetString(bytes, HeaderSize + 14, Math.Min(10, (int)len - HeaderSize - 14));
            Assert.StartsWith("seq ", text);
            int seq = int.Parse(text[4..]);
            received[seq] = received.GetValueOrDefault(seq) + 1;
        }
    }
}
