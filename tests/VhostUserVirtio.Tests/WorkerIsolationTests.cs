using System.Buffers.Binary;
using VhostUserVirtio.Backend;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The control loop and the other devices of a group never wait on one guest's ring: a worker takes a
/// bounded bite of each ring per turn, the control loop hands work to workers without waiting on them
/// for longer than a deadline, memory is retired by the workers themselves, and a stuck worker is
/// reported rather than waited on.
/// </summary>
[Trait("tier", "unit")]
public sealed class WorkerIsolationTests : IDisposable
{
    private readonly GroupBackend _backend = new(vfs: 3);

    public void Dispose() => _backend.Dispose();

    private static string VfMac(int vf) => $"02:56:56:00:00:{vf:x2}";

    /// <summary>A unicast frame between two VFs, with the sender's own MAC as its source.</summary>
    private static byte[] Frame(int from, int to, string text) => NetFrontEnd.Frame(VfMac(to), VfMac(from), text);

    [Fact]
    public async Task A_guest_that_keeps_its_transmit_ring_full_does_not_stall_the_control_loop_the_admin_queue_or_other_vfs()
    {
        const int size = 1024;
        using var hostile = new NetFrontEnd(_backend.Socket(1), queueSize: size);
        var tx = hostile.Tx;
        // One chain of every descriptor in the table (64 KiB: dropped as oversize each time), named by
        // every avail entry and republished as soon as the device consumes it: the device never finds
        // the ring empty.
        ulong buffer = hostile.Session.Ram.Allocate(64 * size, 64);
        for (int i = 0; i < size; i++)
            tx.WriteDescriptor(i, buffer + (ulong)(64 * i), 64, i < size - 1 ? SplitRing.DescNext : (ushort)0, (ushort)(i + 1));
        using var stop = new CancellationTokenSource();
        var flood = Task.Factory.StartNew(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                while ((ushort)(tx.AvailIndex - tx.UsedIndex) < size)
                    tx.PublishHead(0);
                tx.Notify();
            }
        }, TaskCreationOptions.LongRunning);
        try
        {
            Assert.True(SpinWait.SpinUntil(() => tx.UsedIndex > 1000, TimeSpan.FromSeconds(20)), "the flood never got going");

            // The control loop hands a new ring to the same worker, and gets it back.
            using var vf2 = new NetFrontEnd(_backend.Socket(2));
            using var vf3 = new NetFrontEnd(_backend.Socket(3));
            vf3.PostRx(4);
            var frame = Frame(2, 3, "served beside a guest that never lets go");
            vf2.Send(frame);
            Assert.Equal(frame, vf3.Receive(20_000).Frame);

            // The owner's admin queue runs on that worker too.
            using var owner = OwnerDriver.Connect(_backend.Socket(0));
            var reply = owner.Admin.Execute((ushort)AdminOpcode.ListQuery, (ushort)AdminGroupType.SrIov, 0, [], 8);
            Assert.True(reply.Ok, reply.Describe());
            Assert.True(tx.UsedIndex > 1000);
        }
        finally
        {
            stop.Cancel();
            await flood.WaitAsync(TimeSpan.FromSeconds(10));
        }
    }

    [Fact]
    public async Task A_memory_table_change_waits_for_a_busy_worker_only_until_its_deadline_and_never_unmaps_under_it()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        var loop = _backend.Group.DataPath.Loop;
        loop.InvokeDeadline = TimeSpan.FromSeconds(1);
        var region = vf1.Session.Ram.Regions[0];
        long inode = Inode(region.Fd.Number);
        int before = Mappings(inode);   // the front end's own mapping and the back end's
        using var gate = new ManualResetEventSlim();
        using var holding = new ManualResetEventSlim();
        loop.Post(() => { holding.Set(); gate.Wait(TimeSpan.FromSeconds(60)); });
        try
        {
            Assert.True(holding.Wait(TimeSpan.FromSeconds(10)));
            // The same memory again: the back end maps it anew and retires its old mapping. The
            // control loop gives up on the held worker at its deadline and says so to the front end,
            // and the old mapping stays while the worker might still use it.
            var table = MemoryTablePayload.Write([new MemoryRegionDescription(region.Gpa, region.Size, region.UserAddress, region.MmapOffset)]);
            var answered = Task.Run(() => vf1.Session.Connection.Request(FrontendRequest.SetMemTable, table, [region.Fd.Number]));
            var refused = await Assert.ThrowsAsync<FrontEndException>(() => answered.WaitAsync(TimeSpan.FromSeconds(30)));
            Assert.Contains("refused", refused.Message);
            Assert.Equal(MessageErrorKind.WorkerStuck, _backend.Member(1).Endpoint.Backend.LastRejection?.Kind);
            Assert.Equal(before + 1, Mappings(inode));
            // The control loop serves other devices meanwhile.
            Assert.NotEqual(0UL, FrontEndProbe.Features(_backend.Socket(3)));
        }
        finally
        {
            gate.Set();
        }
        Assert.True(SpinWait.SpinUntil(() => Mappings(inode) == before, TimeSpan.FromSeconds(10)),
            $"the worker moved on but the retired mapping was never unmapped ({Mappings(inode)} mappings, {before} expected)");
        // The worker switched the rings when it ran again, and they work.
        Assert.True(SpinWait.SpinUntil(() => !loop.IsStuck, TimeSpan.FromSeconds(10)));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(2);
        var frame = Frame(1, 2, "after the memory table change");
        vf1.Send(frame);
        Assert.Equal(frame, vf2.Receive().Frame);
    }

    private static class FrontEndProbe
    {
        /// <summary>A bare handshake's first answer: the control loop is serving.</summary>
        public static ulong Features(string socket)
        {
            using var fe = VhostUserFrontEnd.Connect(socket);
            return fe.GetFeatures();
        }
    }

    /// <summary>The inode of an open descriptor (/proc/self/fdinfo "ino:").</summary>
    private static long Inode(int fd) =>
        long.Parse(File.ReadAllLines($"/proc/self/fdinfo/{fd}").First(l => l.StartsWith("ino:")).Split(':')[1].Trim());

    /// <summary>How many mappings of this process are of the file with <paramref name="inode"/> (the fifth column of /proc/self/maps).</summary>
    private static int Mappings(long inode) =>
        File.ReadAllLines("/proc/self/maps").Count(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries) is { Length: > 4 } f && f[4] == inode.ToString());

    [Fact]
    public async Task A_stuck_worker_is_reported_and_callers_fail_fast_instead_of_piling_up()
    {
        var loop = _backend.Group.DataPath.Loop;
        loop.InvokeDeadline = TimeSpan.FromSeconds(1);
        using var gate = new ManualResetEventSlim();
        loop.Post(() => gate.Wait(TimeSpan.FromSeconds(60)));
        try
        {
            var first = Task.Run(() => _backend.Group.Status());
            await Assert.ThrowsAsync<LoopStuckException>(() => first.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.True(loop.IsStuck);
            Assert.True(_backend.Logs.Lines.Any(l => l.Level == Microsoft.Extensions.Logging.LogLevel.Critical && l.Text.Contains("stuck")),
                "the stuck worker was not reported");
            // While it is stuck, a caller does not wait again: with a long deadline now, waiting would
            // show up as this test's own timeout instead of the loop's refusal.
            loop.InvokeDeadline = TimeSpan.FromSeconds(120);
            await Assert.ThrowsAsync<LoopStuckException>(() => Task.Run(() => _backend.Group.Status()).WaitAsync(TimeSpan.FromSeconds(30)));
        }
        finally
        {
            gate.Set();
        }
        Assert.True(SpinWait.SpinUntil(() => !loop.IsStuck, TimeSpan.FromSeconds(10)), "the worker ran again but is still reported stuck");
        Assert.NotEmpty(_backend.Group.Status().Ports);
    }
}
