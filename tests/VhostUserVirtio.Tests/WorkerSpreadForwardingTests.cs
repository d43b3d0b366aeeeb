using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A group with two workers runs queue pair i of every port on worker i: both workers forward at
/// once, into receive rings they run themselves or, when a destination uses fewer pairs, into a ring
/// another worker runs (then under its lock). Every frame must arrive exactly once, intact, with
/// exact counters: a race in the ring, the table or the counters shows up as a loss, a duplicate, a
/// torn frame or a count off by some.
/// </summary>
[Trait("tier", "unit")]
public sealed class WorkerSpreadForwardingTests
{
    private const int FramesPerRing = 20_000;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(120);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Two_workers_forwarding_both_ways_deliver_every_frame_exactly_once_with_exact_counters(bool receiverUsesOnePair)
    {
        using var backend = new GroupBackend(vfs: 2, o => o with { QueuePairs = MultiqueuePort.Pairs }, workers: 2);
        using var a = new MultiqueuePort(backend.Socket(1));
        using var b = new MultiqueuePort(backend.Socket(2));
        if (receiverUsesOnePair)
            Assert.Equal(Devices.Net.VirtioNet.Ok, b.SetPairs(1));

        // Queue pair i of each port runs on worker i: two threads forward at once.
        foreach (var member in new[] { backend.Member(1), backend.Member(2) })
        {
            var queues = member.Endpoint.Backend.Queues;
            Assert.True(EchoBackend.WaitUntil(() => queues.Take(4).All(q => q.Started)), "rings should start");
            Assert.NotNull(queues[1].Owner);
            Assert.NotSame(queues[1].Owner, queues[3].Owner);
            Assert.Same(queues[0].Owner, queues[1].Owner);
            Assert.Same(queues[2].Owner, queues[3].Owner);
        }

        // Credits per receiving port: never more frames in flight than one of its rings holds.
        using var toA = new SemaphoreSlim(200);
        using var toB = new SemaphoreSlim(200);
        using var stop = new CancellationTokenSource();
        var traffic = new TrafficThreads();
        var receivers = new[]
        {
            traffic.Run(() => a.ReceiveFrames(0, b.Mac, toA, stop.Token)),
            traffic.Run(() => a.ReceiveFrames(1, b.Mac, toA, stop.Token)),
            traffic.Run(() => b.ReceiveFrames(0, a.Mac, toB, stop.Token)),
            traffic.Run(() => b.ReceiveFrames(1, a.Mac, toB, stop.Token)),
        };
        var senders = new[]
        {
            traffic.Run(() => a.SendFrames(0, "a", b.Mac, FramesPerRing, toB, stop.Token)),
            traffic.Run(() => a.SendFrames(1, "a", b.Mac, FramesPerRing, toB, stop.Token)),
            traffic.Run(() => b.SendFrames(0, "b", a.Mac, FramesPerRing, toA, stop.Token)),
            traffic.Run(() => b.SendFrames(1, "b", a.Mac, FramesPerRing, toA, stop.Token)),
        };
        try
        {
            foreach (var t in senders)
                Assert.True(t.Join(Deadline), "senders did not finish");
            Assert.True(traffic.Ok, traffic.Failures);
            Assert.True(EchoBackend.WaitUntil(() => a.ReceivedCount >= 2 * FramesPerRing && b.ReceivedCount >= 2 * FramesPerRing, 30_000),
                $"frames lost: a got {a.ReceivedCount}, b got {b.ReceivedCount} of {2 * FramesPerRing} each");
        }
        finally
        {
            stop.Cancel();
            foreach (var t in receivers.Concat(senders))
                t.Join(TimeSpan.FromSeconds(10));
        }
        Assert.True(traffic.Ok, traffic.Failures);

        foreach (var (port, sender) in new[] { (a, "b"), (b, "a") })
        {
            Assert.Equal(0, port.Misaddressed);
            Assert.Equal(2 * FramesPerRing, port.Received.Count);
            Assert.All(port.Received, kv => Assert.Equal(1, kv.Value));
            for (int pair = 0; pair < MultiqueuePort.Pairs; pair++)
                for (int seq = 0; seq < FramesPerRing; seq += 997)
                    Assert.True(port.Received.ContainsKey(MultiqueuePort.Payload(sender, pair, seq)), $"{MultiqueuePort.Payload(sender, pair, seq)} missing");
        }
        foreach (var id in new[] { 1, 2 })
        {
            var c = backend.Member(id).Device.Counters;
            Assert.Equal(2L * FramesPerRing, c.TxPackets);
            Assert.Equal(2L * FramesPerRing, c.RxPackets);
            Assert.Equal(2L * FramesPerRing * 96, c.TxBytes);
            Assert.Equal(2L * FramesPerRing * 96, c.RxBytes);
            Assert.Equal(0, c.TotalDrops);
        }
        var bRings = backend.Member(2).Endpoint.Backend.Queues;
        if (receiverUsesOnePair)
        {
            // Both of a's workers delivered into b's only ring: it was shared, under its lock.
            Assert.True(bRings[0].Gate.Shared, "b's receive ring should have been shared by the two workers");
            Assert.Equal(0, b.Rx(1).UsedIndex);
        }
        else
        {
            // Each worker delivered into the ring of the pair it serves: no lock was ever needed.
            Assert.False(bRings[0].Gate.Shared || bRings[2].Gate.Shared, "each worker should deliver into its own pair's ring");
        }
    }
}
