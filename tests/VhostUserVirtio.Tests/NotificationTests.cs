using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>Notification suppression both ways: EVENT_IDX and the NO_INTERRUPT / NO_NOTIFY flags.</summary>
[Trait("tier", "unit")]
public sealed class NotificationTests : IDisposable
{
    private readonly EchoBackend _backend = new(devices: 1);

    public void Dispose() => _backend.Dispose();

    private static void PostAndWaitConsumed(FrontEndSession s, DriverQueue q)
    {
        ulong src = s.Ram.Allocate(8), dst = s.Ram.Allocate(8);
        ushort before = q.UsedIndex;
        q.AddChain(new BufferSpec[] { new(src, 8, false), new(dst, 8, true) });
        q.Notify();
        Assert.True(EchoBackend.WaitUntil(() => q.UsedIndex != before), "chain was not consumed");
    }

    [Fact]
    public void Event_idx_calls_only_when_the_used_index_passes_used_event()
    {
        using var s = FrontEndSession.Start(_backend.SocketPath(0));
        Assert.True(VirtioFeature.Has(s.Features, VirtioFeature.RingEventIdx));
        var q = s.Queues[0];
        Echo.RoundTrip(s, 0, Echo.Text("prime"));  // used index 1, used_event 1
        q.Call.Drain();

        q.SetUsedEvent(3);  // "call me when used passes 3", i.e. after the 4th used entry
        PostAndWaitConsumed(s, q);   // used 2
        PostAndWaitConsumed(s, q);   // used 3
        Assert.Equal(0UL, q.Call.Drain());
        PostAndWaitConsumed(s, q);   // used 4 passes 3
        Assert.True(q.Call.Wait(10_000), "no call after used passed used_event");
    }

    [Fact]
    public void Event_idx_device_publishes_avail_event_after_draining()
    {
        using var s = FrontEndSession.Start(_backend.SocketPath(0));
        var q = s.Queues[1];
        for (int i = 0; i < 3; i++)
            Echo.RoundTrip(s, 1, Echo.Text("x"));
        Assert.True(EchoBackend.WaitUntil(() => q.AvailEvent == 3), $"avail_event is {q.AvailEvent}, expected 3");
    }

    [Fact]
    public void Without_event_idx_no_interrupt_suppresses_calls_and_no_notify_is_cleared_when_idle()
    {
        ulong noEventIdx = ~VirtioFeature.Mask(VirtioFeature.RingEventIdx);
        using var s = FrontEndSession.Start(_backend.SocketPath(0), new FrontEndSession.Options { WantedFeatures = noEventIdx });
        var q = s.Queues[0];
        q.SetNoInterrupt(true);
        PostAndWaitConsumed(s, q);
        PostAndWaitConsumed(s, q);
        Thread.Sleep(100);
        Assert.Equal(0UL, q.Call.Drain());

        q.SetNoInterrupt(false);
        PostAndWaitConsumed(s, q);
        Assert.True(q.Call.Wait(10_000));
        Assert.False(q.DeviceSuppressesKicks, "device left NO_NOTIFY set while idle: kicks would be lost");
    }

    [Fact]
    public void A_polling_worker_suppresses_kicks_while_busy_and_rearms_them_before_sleeping()
    {
        using var backend = new EchoBackend(devices: 1, pollWindow: TimeSpan.FromMilliseconds(200));
        ulong noEventIdx = ~VirtioFeature.Mask(VirtioFeature.RingEventIdx);
        using var s = FrontEndSession.Start(backend.SocketPath(0), new FrontEndSession.Options { WantedFeatures = noEventIdx });
        var q = s.Queues[0];
        Echo.RoundTrip(s, 0, Echo.Text("wake the poller"));
        Assert.True(q.DeviceSuppressesKicks, "while polling, the device should tell the driver not to kick");

        // Without a kick the poller still finds new buffers.
        ulong src = s.Ram.Allocate(8), dst = s.Ram.Allocate(8);
        q.AddChain(new BufferSpec[] { new(src, 8, false), new(dst, 8, true) });
        Assert.True(EchoBackend.WaitUntil(() => q.UsedIndex == 2), "the polling worker did not pick up an unkicked chain");
        q.WaitUsed();

        // Idle past the window: kicks are re-enabled, and a kicked chain is still served.
        Assert.True(EchoBackend.WaitUntil(() => !q.DeviceSuppressesKicks), "kicks were never re-enabled");
        Echo.RoundTrip(s, 0, Echo.Text("after sleeping"));
    }
}
