using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Checksum and TSO offloads between two VFs driven by the front-end library: passed on when the
/// receiver negotiated them, finished in software (checksums, segments) when it did not. Frames and
/// checksums are checked with the test's own RFC 1071 code (<see cref="TcpFrames"/>).
/// </summary>
[Trait("tier", "unit")]
public sealed class OffloadDeliveryTests : IDisposable
{
    private const string A = "02:56:56:00:00:01", B = "02:56:56:00:00:02";
    private static readonly ulong GuestTso = VirtioFeature.Mask(VirtioNet.FGuestTso4) | VirtioFeature.Mask(VirtioNet.FGuestTso6) | VirtioFeature.Mask(VirtioNet.FGuestEcn);
    private static readonly ulong NoGuestOffloads = ~(GuestTso | VirtioFeature.Mask(VirtioNet.FGuestCsum));
    private readonly GroupBackend _backend = new(vfs: 2);

    public void Dispose() => _backend.Dispose();

    [Fact]
    public void The_device_offers_checksum_and_tso_both_ways_and_no_ufo()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        ulong f = vf1.Session.Features;
        foreach (int bit in new[] { VirtioNet.FCsum, VirtioNet.FGuestCsum, VirtioNet.FHostTso4, VirtioNet.FHostTso6, VirtioNet.FGuestTso4, VirtioNet.FGuestTso6, VirtioNet.FMrgRxbuf })
            Assert.True(VirtioFeature.Has(f, bit), $"feature {bit} not negotiated");
        Assert.False(VirtioFeature.Has(f, 10)); // GUEST_UFO
        Assert.False(VirtioFeature.Has(f, 14)); // HOST_UFO
    }

    [Fact]
    public void A_checksum_left_to_the_device_is_completed_for_a_receiver_without_guest_csum()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2), NoGuestOffloads);
        vf2.PostRx(4);
        var frame = TcpFrames.Build(B, A, v6: false, payload: 999); // odd: the last word is padded
        Assert.False(TcpFrames.ChecksumsValid(frame, v6: false));
        vf1.Send(frame, TcpFrames.Header(v6: false));

        var (header, got) = vf2.ReceiveWithHeader();
        Assert.Equal(0, header[0]); // no NEEDS_CSUM for a driver that did not negotiate GUEST_CSUM
        Assert.True(TcpFrames.ChecksumsValid(got, v6: false), "the completed TCP checksum is wrong");
        // Everything but the checksum field is the sender's frame.
        int field = TcpFrames.EthernetLength + TcpFrames.IPv4Length + 16;
        Assert.Equal(frame[..field], got[..field]);
        Assert.Equal(frame[(field + 2)..], got[(field + 2)..]);
        Assert.Equal(1, _backend.Member(2).Device.Counters.ChecksumsCompleted);
    }

    [Fact]
    public void A_checksum_request_is_passed_on_to_a_receiver_that_negotiated_guest_csum()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(4);
        var frame = TcpFrames.Build(B, A, v6: true, payload: 300);
        vf1.Send(frame, TcpFrames.Header(v6: true));

        var (header, got) = vf2.ReceiveWithHeader();
        Assert.Equal(VirtioNet.HdrFlagNeedsCsum, header[0]);
        Assert.Equal(TcpFrames.EthernetLength + TcpFrames.IPv6Length, BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(6)));
        Assert.Equal(16, BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(8)));
        Assert.Equal(frame, got); // untouched: the receiver completes it
        Assert.Equal(1, _backend.Member(2).Device.Counters.OffloadsPassedThrough);
        Assert.Equal(0, _backend.Member(2).Device.Counters.ChecksumsCompleted);
    }

    [Fact]
    public void Segments_taken_before_the_receive_ring_ran_out_reach_the_receiver()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2), ~GuestTso);
        vf2.PostRx(3); // room for 3 of the 7 segments: the frame fails, but what was written is the guest's
        vf1.Send(TcpFrames.Build(B, A, v6: false, payload: 10_000), TcpFrames.Header(v6: false, 1448));
        for (int i = 0; i < 3; i++)
            Assert.Equal(0, vf2.ReceiveWithHeader().Header[1]);
    }

    [Theory]
    [InlineData(false, 10_000, 1448, 7)]
    [InlineData(true, 5_000, 1428, 4)]
    [InlineData(false, 2 * 1448, 1448, 2)]
    public void A_tso_frame_is_segmented_for_a_receiver_without_guest_tso(bool v6, int payload, int mss, int segments)
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2), ~GuestTso); // GUEST_CSUM, but not TSO
        vf2.PostRx(16);
        const uint Seq = 0xfffff000; // wraps inside the frame
        var frame = TcpFrames.Build(B, A, v6, payload, Seq, TcpFrames.Ack | TcpFrames.Psh | TcpFrames.Fin | TcpFrames.Cwr, ipId: 0xfffe);
        vf1.Send(frame, TcpFrames.Header(v6, (ushort)mss));

        var data = new List<byte>();
        for (int i = 0; i < segments; i++)
        {
            var (header, got) = vf2.ReceiveWithHeader();
            Assert.Equal(0, header[1]); // gso_type NONE
            int expected = Math.Min(mss, payload - i * mss);
            Assert.Equal(TcpFrames.HeadersLength(v6) + expected, got.Length);
            Assert.True(TcpFrames.ChecksumsValid(got, v6), $"segment {i}: bad checksum");
            Assert.Equal(unchecked(Seq + (uint)(i * mss)), TcpFrames.Sequence(got, v6));
            byte flags = TcpFrames.Flags(got, v6);
            bool last = i == segments - 1;
            Assert.Equal(last, (flags & TcpFrames.Fin) != 0);
            Assert.Equal(last, (flags & TcpFrames.Psh) != 0);
            Assert.Equal(i == 0, (flags & TcpFrames.Cwr) != 0);
            Assert.True((flags & TcpFrames.Ack) != 0);
            var ip = got.AsSpan(TcpFrames.EthernetLength);
            if (v6)
            {
                Assert.Equal(TcpFrames.TcpLength + expected, BinaryPrimitives.ReadUInt16BigEndian(ip[4..]));
            }
            else
            {
                Assert.Equal(TcpFrames.IPv4Length + TcpFrames.TcpLength + expected, BinaryPrimitives.ReadUInt16BigEndian(ip[2..]));
                Assert.Equal(unchecked((ushort)(0xfffe + i)), BinaryPrimitives.ReadUInt16BigEndian(ip[4..]));
            }
            Assert.Equal(frame[..TcpFrames.EthernetLength], got[..TcpFrames.EthernetLength]);
            data.AddRange(TcpFrames.Payload(got, v6).ToArray());
        }
        Assert.Equal(TcpFrames.Payload(frame, v6).ToArray(), data.ToArray());
        Assert.True(vf2.NothingWithin(200));
        var c = _backend.Member(2).Device.Counters;
        Assert.Equal((1L, (long)segments), (c.FramesSegmented, c.SegmentsMade));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_64_KiB_tso_frame_moves_whole_when_both_ends_negotiated_tso(bool v6)
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(64); // mergeable 2 KiB buffers: about 32 for the frame
        int payload = 65535 - TcpFrames.NetworkLength(v6) - TcpFrames.TcpLength - (v6 ? 40 : 0);
        var frame = TcpFrames.Build(B, A, v6, payload);
        var sent = TcpFrames.Header(v6, 1400);
        vf1.Send(frame, sent);

        var (header, got) = vf2.ReceiveWithHeader();
        Assert.Equal(frame, got);
        Assert.Equal(VirtioNet.HdrFlagNeedsCsum, header[0]);
        Assert.Equal(v6 ? VirtioNet.GsoTcpV6 : VirtioNet.GsoTcpV4, header[1]);
        Assert.Equal(sent[2..10], header[2..10]); // hdr_len, gso_size, csum_start, csum_offset
        Assert.True(BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(10)) > 1, "a 64 KiB frame in one 2 KiB buffer?");
        var c = _backend.Member(2).Device.Counters;
        Assert.Equal((1L, 0L), (c.OffloadsPassedThrough, c.FramesSegmented));
    }

    [Fact]
    public void The_same_tso_frame_flooded_reaches_one_port_whole_and_another_segmented()
    {
        using var backend = new GroupBackend(vfs: 3);
        using var vf1 = new NetFrontEnd(backend.Socket(1));
        using var vf2 = new NetFrontEnd(backend.Socket(2));
        using var vf3 = new NetFrontEnd(backend.Socket(3), NoGuestOffloads);
        vf2.PostRx(16); vf3.PostRx(16);
        var frame = TcpFrames.Build("02:56:56:00:00:99", A, v6: false, payload: 4000); // unknown unicast: flooded
        vf1.Send(frame, TcpFrames.Header(v6: false, 1448));
        Assert.Equal(frame, vf2.Receive().Frame);
        for (int i = 0; i < 3; i++)
            Assert.True(TcpFrames.ChecksumsValid(vf3.Receive().Frame, v6: false));
        Assert.Equal(1, backend.Member(3).Device.Counters.FramesSegmented);
        Assert.Equal(1, backend.Member(2).Device.Counters.OffloadsPassedThrough);
    }
}
