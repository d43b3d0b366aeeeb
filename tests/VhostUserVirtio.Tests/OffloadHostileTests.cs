using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Offload requests a guest controls are hostile input: each bad one is dropped at the sender,
/// counted and logged, and the switch keeps carrying the sender's and other ports' frames.
/// </summary>
[Trait("tier", "unit")]
public sealed class OffloadHostileTests : IDisposable
{
    private const string A = "02:56:56:00:00:01", B = "02:56:56:00:00:02";
    private readonly GroupBackend _backend = new(vfs: 2);

    public void Dispose() => _backend.Dispose();

    public enum Attack
    {
        ChecksumStartBeyondFrame,
        ChecksumOffsetBeyondFrame,
        ChecksumInsideEthernetHeader,
        GsoSizeZero,
        GsoSizeLargerThanMtu,
        TcpV4OnIPv6Frame,
        TcpV6OnIPv4Frame,
        UdpGso,
        DataValidOnTransmit,
        GsoWithoutNeedsChecksum,
        GsoOnUdp,
        GsoWithoutPayload,
        GsoChecksumNotAtTcp,
        EcnWithoutHostEcn,
    }

    private static (byte[] Frame, byte[] Header) Build(Attack attack)
    {
        bool v6 = attack == Attack.TcpV4OnIPv6Frame;
        var frame = TcpFrames.Build(B, A, v6, payload: 3000);
        var header = TcpFrames.Header(v6, gsoSize: 1448);
        switch (attack)
        {
            case Attack.ChecksumStartBeyondFrame:
                header[1] = 0;
                BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(6), 60000);
                frame = frame[..1000];
                break;
            case Attack.ChecksumOffsetBeyondFrame:
                header[1] = 0;
                BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(8), 999);
                frame = frame[..1000];
                break;
            case Attack.ChecksumInsideEthernetHeader:
                header[1] = 0;
                BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(6), 0);
                BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(8), 0);
                frame = frame[..1000];
                break;
            case Attack.GsoSizeZero:
                BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(4), 0);
                break;
            case Attack.GsoSizeLargerThanMtu:
                BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(4), 1449); // 20 + 32 + 1449 > 1500
                break;
            case Attack.TcpV4OnIPv6Frame:
                header[1] = TcpFrames.GsoTcpV4;
                break;
            case Attack.TcpV6OnIPv4Frame:
                header[1] = TcpFrames.GsoTcpV6;
                break;
            case Attack.UdpGso:
                header[1] = 3;
                break;
            case Attack.DataValidOnTransmit:
                header[0] = 2;
                header[1] = 0;
                frame = frame[..1000];
                break;
            case Attack.GsoWithoutNeedsChecksum:
                header[0] = 0;
                break;
            case Attack.GsoOnUdp:
                frame[TcpFrames.EthernetLength + 9] = 17;
                break;
            case Attack.GsoWithoutPayload:
                frame = frame[..TcpFrames.HeadersLength(false)];
                break;
            case Attack.GsoChecksumNotAtTcp:
                BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(8), 6);
                break;
            case Attack.EcnWithoutHostEcn:
                header[1] |= 0x80;
                break;
        }
        return (frame, header);
    }

    [Theory]
    [MemberData(nameof(Attacks))]
    public void A_bad_offload_header_is_dropped_counted_and_logged_and_the_sender_keeps_working(Attack attack)
    {
        ulong features = attack == Attack.EcnWithoutHostEcn ? ~VirtioFeature.Mask(VirtioNet.FHostEcn) : ulong.MaxValue;
        using var vf1 = new NetFrontEnd(_backend.Socket(1), features);
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(16);
        var (frame, header) = Build(attack);
        vf1.Send(frame, header);
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.BadHeader) == 1));
        Assert.True(vf2.NothingWithin(200));
        Assert.True(_backend.Logs.HasWarning("virtio-net header was refused"));

        // The same sender's good offloaded frame, and plain frames both ways, still go through.
        var good = TcpFrames.Build(B, A, v6: false, payload: 3000);
        vf1.Send(good, TcpFrames.Header(v6: false, 1448));
        Assert.Equal(good, vf2.Receive().Frame);
        vf1.PostRx(4);
        var back = NetFrontEnd.Frame(A, B, "still here");
        vf2.Send(back);
        Assert.Equal(back, vf1.Receive().Frame);
        Assert.Equal(1, _backend.Member(1).Device.Counters.TotalDrops);
    }

    public static TheoryData<Attack> Attacks() => new(Enum.GetValues<Attack>());

    [Theory]
    [InlineData(VirtioNet.FHostTso4, false)]
    [InlineData(VirtioNet.FHostTso6, true)]
    public void A_gso_frame_from_a_driver_that_did_not_negotiate_host_tso_is_dropped(int feature, bool v6)
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), ~VirtioFeature.Mask(feature));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(8);
        vf1.Send(TcpFrames.Build(B, A, v6, payload: 3000), TcpFrames.Header(v6, 1400));
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.BadHeader) == 1));
        Assert.True(vf2.NothingWithin(200));
    }

    [Fact]
    public void A_checksum_request_from_a_driver_that_did_not_negotiate_csum_is_dropped()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), ~VirtioFeature.Mask(VirtioNet.FCsum));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(2);
        vf1.Send(TcpFrames.Build(B, A, v6: false, payload: 100), TcpFrames.Header(v6: false));
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.BadHeader) == 1));
        Assert.True(vf2.NothingWithin(200));
    }

    [Fact]
    public void A_frame_over_the_mtu_is_dropped_as_oversize_unless_it_is_gso()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(8);
        var frame = TcpFrames.Build(B, A, v6: false, payload: 3000);
        vf1.Send(frame, TcpFrames.Header(v6: false)); // NEEDS_CSUM only: the MTU still applies
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.Oversize) == 1));
        vf1.Send(frame); // no offload at all
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.Oversize) == 2));
        Assert.True(vf2.NothingWithin(200));
    }

    [Fact]
    public void A_gso_frame_longer_than_the_largest_frame_is_dropped_as_oversize()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(64);
        var frame = TcpFrames.Build(B, A, v6: true, payload: Frame.MaxLength); // > 64 KiB + headers
        vf1.Send(frame, TcpFrames.Header(v6: true, 1400));
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.Oversize) == 1));
        Assert.True(vf2.NothingWithin(200));
    }
}
