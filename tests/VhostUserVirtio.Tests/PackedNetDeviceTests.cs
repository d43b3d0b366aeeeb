using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>virtio-net members driven over packed rings (VIRTIO_F_RING_PACKED) by the front-end library, next to split-ring members.</summary>
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
}
