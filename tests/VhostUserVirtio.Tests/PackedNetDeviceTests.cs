using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>virtio-net members driven over packed rings (VIRTIO_F_RING_PACKED) by the front-end library, next to split-ring members.</summary>
[Trait("tier", "unit")]
public sealed class PackedNetDeviceTests : IDisposable
{
    private const string A = "02:56:56:00:00:01", B = "02:56:56:00:00:02", Bcast = "ff:ff:ff:ff:ff:ff";
    private readonly GroupBackend _backend = new(vfs: 2);

    public void Dispose() => _backend.Dispose();

    [Fact]
    public void Frames_cross_between_a_packed_ring_member_and_a_split_ring_member()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), packed: true);
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        Assert.True(VirtioFeature.Has(vf1.Session.Features, VirtioFeature.RingPacked));
        Assert.True(_backend.Member(1).Endpoint.Backend.Queues[0].Ring.IsPacked);
        Assert.False(_backend.Member(2).Endpoint.Backend.Queues[0].Ring.IsPacked);
        vf1.PostRx(8); vf2.PostRx(8);

        var hello = NetFrontEnd.Frame(Bcast, A, "from packed");
        vf1.Send(hello);
        Assert.Equal(hello, vf2.Receive().Frame);
        var reply = NetFrontEnd.Frame(A, B, "from split");
        vf2.Send(reply);
        var (numBuffers, frame) = vf1.Receive();
        Assert.Equal(1, numBuffers);
        Assert.Equal(reply, frame);
    }

    [Fact]
    public void Mergeable_receive_spreads_frames_over_several_buffers_across_the_ring_wrap()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), packed: true);
        using var vf2 = new NetFrontEnd(_backend.Socket(2), packed: true, queueSize: 16);
        var big = NetFrontEnd.Frame(Bcast, A, new string('x', 1400));
        int perFrame = (12 + big.Length + 255) / 256;
        // Six frames of six buffers each go round a ring of 16 slots more than twice.
        for (int i = 0; i < 6; i++)
        {
            vf2.PostRx(perFrame, size: 256);
            vf1.Send(big);
            var (numBuffers, frame) = vf2.Receive();
            Assert.Equal(perFrame, numBuffers);
            Assert.Equal(big, frame);
        }
    }

    [Fact]
    public void A_frame_without_enough_buffers_takes_none_and_the_buffers_serve_the_next_frame()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), packed: true);
        using var vf2 = new NetFrontEnd(_backend.Socket(2), packed: true, queueSize: 8);
        // Move the ring's position near its end, so the rewound chains straddle the wrap.
        for (int i = 0; i < 6; i++)
        {
            vf2.PostRx(1);
            var f = NetFrontEnd.Frame(Bcast, A, $"frame {i}");
            vf1.Send(f);
            Assert.Equal(f, vf2.Receive().Frame);
        }
        vf2.PostRx(3, size: 256);
        vf1.Send(NetFrontEnd.Frame(Bcast, A, new string('z', 1400)));
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(2).Device.Counters.Drops(DropReason.NoRxBuffer) == 1));
        Assert.True(vf2.NothingWithin(200));
        var small = NetFrontEnd.Frame(Bcast, A, "fits in the first buffer");
        vf1.Send(small);
        Assert.Equal(small, vf2.Receive().Frame);
        Assert.Null(_backend.Member(2).Endpoint.Backend.Queues[0].Ring.Fault);
    }

    [Fact]
    public void A_frame_sent_through_an_indirect_table_is_forwarded()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), packed: true);
        using var vf2 = new NetFrontEnd(_backend.Socket(2), packed: true);
        vf2.PostRx(2);
        var frame = NetFrontEnd.Frame(Bcast, A, "indirect");
        var ram = vf1.Session.Ram;
        ulong header = ram.Allocate(NetFrontEnd.HeaderSize, 16), body = ram.Allocate((ulong)frame.Length, 16);
        ram.Span(header, NetFrontEnd.HeaderSize).Clear();
        frame.CopyTo(ram.Span(body, frame.Length));
        vf1.Tx.AddIndirectChain(new BufferSpec[] { new(header, NetFrontEnd.HeaderSize, false), new(body, (uint)frame.Length, false) });
        vf1.Tx.Notify();
        vf1.Tx.WaitUsed();
        Assert.Equal(frame, vf2.Receive().Frame);
    }

    [Fact]
    public void The_driver_is_interrupted_unless_its_event_area_says_disable()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), packed: true);
        using var vf2 = new NetFrontEnd(_backend.Socket(2), packed: true);
        vf2.PostRx(4);
        vf2.Rx.Call.Drain();
        vf1.Send(NetFrontEnd.Frame(Bcast, A, "interrupt me"));
        Assert.True(vf2.Rx.Call.Wait(10_000), "no used-buffer notification");
        vf2.Receive();

        vf2.Rx.SetPackedDriverEvent(PackedRing.EventDisable);
        vf2.Rx.Call.Drain();
        var quiet = NetFrontEnd.Frame(Bcast, A, "do not interrupt me");
        vf1.Send(quiet);
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(2).Device.Counters.RxPackets == 2));
        Assert.False(vf2.Rx.Call.Wait(300), "notified although the driver disabled notifications");
        Assert.Equal(quiet, vf2.Receive().Frame);
    }

    [Fact]
    public void Get_vring_base_reports_slot_and_wrap_counter_and_a_restart_resumes_there()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), packed: true, queueSize: 8);
        using var vf2 = new NetFrontEnd(_backend.Socket(2), packed: true);
        vf2.PostRx(32);
        for (int i = 0; i < 11; i++)
            vf1.Send(NetFrontEnd.Frame(Bcast, A, $"before {i}"));
        for (int i = 0; i < 11; i++)
            vf2.Receive();

        // Eleven one-descriptor chains in a ring of eight: slot 3 of the second lap (wrap counter 0),
        // the used side at the same place (QEMU's upper half).
        var fe = vf1.Session.Connection;
        uint stoppedAt = fe.GetVringBase(1);
        Assert.Equal(0x0003_0003u, stoppedAt);
        Assert.False(_backend.Member(1).Endpoint.Backend.Queues[1].Started);

        fe.SetVringBase(1, stoppedAt);
        fe.SetVringKick(1, vf1.Tx.Kick);
        var after = NetFrontEnd.Frame(Bcast, A, "after the restart");
        vf1.Send(after);
        Assert.Equal(after, vf2.Receive().Frame);
        Assert.Null(_backend.Member(1).Endpoint.Backend.Queues[1].Ring.Fault);
    }

    [Fact]
    public void A_packed_ring_base_naming_a_slot_outside_the_ring_is_refused()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), packed: true, queueSize: 8);
        var fe = vf1.Session.Connection;
        fe.GetVringBase(1);
        Assert.Throws<FrontEndException>(() => fe.SetVringBase(1, 0x8008));
        // The connection stays usable, and a valid base is taken.
        fe.SetVringBase(1, 0x8000);
    }
}
