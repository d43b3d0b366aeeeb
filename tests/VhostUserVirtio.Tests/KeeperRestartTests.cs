using System.Text;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The daemon under its session keeper (`vhost-virtio keep`), driven by the project's own front end:
/// killed with SIGKILL, it comes back with every session as it was, and the frames a front end queued
/// meanwhile arrive once each, in order, over connections that never closed. A session that cannot be
/// carried over is closed so its front end starts over, and stopping the keeper ends every session.
/// </summary>
[Trait("tier", "daemon")]
public sealed class KeeperRestartTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);
    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-keeper-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private DaemonProcess StartKept(out int daemon)
    {
        var keeper = DaemonProcess.Start(["keep", "--", "serve", "--vfs", "2", "--socket-dir", _dir]);
        daemon = keeper.WaitForKeptDaemon(1);
        return keeper;
    }

    [Fact]
    public void Frames_queued_while_the_daemon_is_killed_arrive_once_each_in_order_over_connections_that_never_closed()
    {
        using var keeper = StartKept(out int daemon);
        try
        {
            using var a = new NetFrontEnd(Path.Combine(_dir, "vf1.sock"));
            using var b = new NetFrontEnd(Path.Combine(_dir, "vf2.sock"));
            b.PostRx(200);
            string macA = a.Mac, macB = b.Mac;
            a.SendAll(Enumerable.Range(0, 20).Select(i => NetFrontEnd.Frame(macB, macA, $"frame {i}")).ToList());
            for (int i = 0; i < 20; i++)
                Assert.Equal($"frame {i}", Payload(b.Receive().Frame));

            Assert.True(ProcessSignal.Send(daemon, ProcessSignal.SigKill));
            // The guest keeps transmitting while no daemon runs: the frames wait in its ring.
            for (int i = 20; i < 120; i++)
                QueueFrame(a, NetFrontEnd.Frame(macB, macA, $"frame {i}"));
            a.Tx.Notify();
            keeper.WaitForKeptDaemon(2);

            for (int i = 20; i < 120; i++)
                Assert.Equal($"frame {i}", Payload(b.Receive().Frame));
            Assert.True(b.NothingWithin(500), "a frame arrived twice");
            // The same connections carry the front ends' requests to the new process.
            Assert.Equal(macA, a.Mac);
            Assert.Equal(macB, b.Mac);
            Assert.Contains("vf1: front end's session on", keeper.Output);
            Assert.DoesNotContain("front end disconnected", keeper.Output);
        }
        finally
        {
            output.WriteLine(keeper.Output);
        }
    }

    [Fact]
    public void A_session_with_packed_rings_is_closed_after_a_restart_so_its_front_end_starts_over()
    {
        using var keeper = StartKept(out int daemon);
        try
        {
            using var packed = new NetFrontEnd(Path.Combine(_dir, "vf1.sock"), packed: true);
            string mac = packed.Mac;
            Assert.True(ProcessSignal.Send(daemon, ProcessSignal.SigKill));
            keeper.WaitForKeptDaemon(2);
            Assert.True(packed.Session.Connection.WaitForClose(60_000), "the packed-ring session was not closed");
            keeper.WaitUntil(() => keeper.Output.Contains("packed rings do not record where they stand", StringComparison.Ordinal),
                Deadline, "the reason in the log");
            using var again = new NetFrontEnd(Path.Combine(_dir, "vf1.sock"), packed: true);
            Assert.Equal(mac, again.Mac);
        }
        finally
        {
            output.WriteLine(keeper.Output);
        }
    }

    [Fact]
    public void Stopping_the_keeper_stops_the_daemon_cleanly_closes_every_session_and_removes_the_sockets()
    {
        using var keeper = StartKept(out int daemon);
        using var a = new NetFrontEnd(Path.Combine(_dir, "vf1.sock"));
        Assert.True(ProcessSignal.Send(daemon, ProcessSignal.SigKill));
        keeper.WaitForKeptDaemon(2);

        keeper.Terminate();
        Assert.True(keeper.WaitForExit(Deadline), "the keeper did not stop:\n" + keeper.Output);
        Assert.Equal(0, keeper.ExitCode);
        Assert.True(a.Session.Connection.WaitForClose(10_000), "the front end's connection stayed open");
        Assert.False(File.Exists(Path.Combine(_dir, "vf1.sock")), "the socket was left behind");
        Assert.Throws<ArgumentException>(() => Process(daemon));
    }

    private static System.Diagnostics.Process Process(int pid) => System.Diagnostics.Process.GetProcessById(pid);

    private static void QueueFrame(NetFrontEnd fe, byte[] frame)
    {
        ulong address = fe.Session.Ram.Allocate((ulong)(NetFrontEnd.HeaderSize + frame.Length), 64);
        var buffer = fe.Session.Ram.Span(address, NetFrontEnd.HeaderSize + frame.Length);
        buffer[..NetFrontEnd.HeaderSize].Clear();
        frame.CopyTo(buffer[NetFrontEnd.HeaderSize..]);
        fe.Tx.AddChain([new(address, (uint)buffer.Length, false)]);
    }

    private static string Payload(byte[] frame) => Encoding.ASCII.GetString(frame, 14, frame.Length - 14).TrimEnd('\0');


}
