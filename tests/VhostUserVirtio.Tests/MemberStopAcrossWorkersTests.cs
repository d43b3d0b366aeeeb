using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The owner stops a member whose queue pairs run on two workers while both forward: the stop
/// returns only after each worker finished its burst, with every buffer taken written back, and no
/// worker touches the member's rings afterwards.
/// </summary>
[Trait("tier", "unit")]
public sealed class MemberStopAcrossWorkersTests
{
    [Fact]
    public void A_member_stopped_while_two_workers_forward_has_every_buffer_returned_and_its_rings_stay_still()
    {
        using var backend = new GroupBackend(vfs: 2, o => o with { QueuePairs = MultiqueuePort.Pairs }, workers: 2);
        using var a = new MultiqueuePort(backend.Socket(1));
        using var b = new MultiqueuePort(backend.Socket(2));
        var aRings = backend.Member(1).Endpoint.Backend.Queues;
        var bRings = backend.Member(2).Endpoint.Backend.Queues;
        Assert.True(EchoBackend.WaitUntil(() => aRings.Take(4).All(q => q.Started) && bRings.Take(4).All(q => q.Started)), "rings should start");
        Assert.NotSame(aRings[1].Owner, aRings[3].Owner);

        using var unlimited = new SemaphoreSlim(int.MaxValue / 2);
        using var stop = new CancellationTokenSource();
        var traffic = new TrafficThreads();
        var threads = new[]
        {
            traffic.Run(() => b.ReceiveFrames(0, a.Mac, unlimited, stop.Token)),
            traffic.Run(() => b.ReceiveFrames(1, a.Mac, unlimited, stop.Token)),
            traffic.Run(() => a.SendFrames(0, "a", b.Mac, int.MaxValue, unlimited, stop.Token)),
            traffic.Run(() => a.SendFrames(1, "a", b.Mac, int.MaxValue, unlimited, stop.Token)),
        };
        var home = backend.Group.DataPath.Loop;
        try
        {
            Assert.True(EchoBackend.WaitUntil(() => b.ReceivedCount > 2000, 30_000), "traffic should flow before the stop");

            // The receiver first: both workers deliver into its rings.
            home.Invoke(() => backend.Member(2).Endpoint.Backend.SetMemberStopped(true));
            AssertStill(b, bRings, rx: true);
            Assert.True(EchoBackend.WaitUntil(() => backend.Group.Status().DroppedWhileStopped > 0, 30_000), "a keeps sending while b is stopped");

            // Then the sender: both workers take frames from its rings.
            home.Invoke(() => backend.Member(1).Endpoint.Backend.SetMemberStopped(true));
            AssertStill(a, aRings, rx: false);

            home.Invoke(() => backend.Member(1).Endpoint.Backend.SetMemberStopped(false));
            home.Invoke(() => backend.Member(2).Endpoint.Backend.SetMemberStopped(false));
            int resumedAt = b.ReceivedCount;
            Assert.True(EchoBackend.WaitUntil(() => b.ReceivedCount > resumedAt + 2000, 30_000), "traffic should flow again after the resume");
        }
        finally
        {
            stop.Cancel();
            foreach (var t in threads)
                t.Join(TimeSpan.FromSeconds(40));
        }
        Assert.True(traffic.Ok, traffic.Failures);
        Assert.Equal(0, b.Misaddressed);
        Assert.All(b.Received, kv => Assert.Equal(1, kv.Value));
    }

    /// <summary>
    /// Right after the stop returned: each ring's chains taken by the device (its next avail index)
    /// are all in the used ring the driver sees, and the used index does not move for a while.
    /// </summary>
    private static void AssertStill(MultiqueuePort port, IReadOnlyList<Backend.DeviceQueue> rings, bool rx)
    {
        var used = new ushort[MultiqueuePort.Pairs];
        for (int pair = 0; pair < MultiqueuePort.Pairs; pair++)
        {
            var driver = rx ? port.Rx(pair) : port.Tx(pair);
            var device = rings[driver.Index];
            used[pair] = driver.UsedIndex;
            Assert.True(device.Ring.NextAvail == used[pair],
                $"ring {driver.Index}: the device took {device.Ring.NextAvail} chains but returned {used[pair]}");
        }
        Thread.Sleep(500);
        for (int pair = 0; pair < MultiqueuePort.Pairs; pair++)
        {
            var driver = rx ? port.Rx(pair) : port.Tx(pair);
            Assert.True(driver.UsedIndex == used[pair], $"ring {driver.Index} moved after the stop returned");
        }
    }
}
