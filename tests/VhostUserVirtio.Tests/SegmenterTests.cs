using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Net.Offload;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The offload pieces alone: the checksum against the test's own RFC 1071 code, and the segmenter's second check on its copy.</summary>
[Trait("tier", "unit")]
public sealed class SegmenterTests
{
    private const string A = "02:56:56:00:00:01", B = "02:56:56:00:00:02";

    [Fact]
    public void Checksum_completion_matches_an_independent_rfc1071_sum_for_every_length_and_start()
    {
        var random = new Random(12);
        for (int length = 16; length < 300; length++)
        {
            var data = new byte[length];
            random.NextBytes(data);
            int start = 14 + 2 * random.Next(0, Math.Min(4, (length - 16) / 2 + 1));
            int offset = 2 * random.Next(0, (length - start - 2) / 2 + 1);
            var expected = (byte[])data.Clone();
            expected[start + offset] = expected[start + offset + 1] = 0;
            // What the field must hold: the complement of the sum over [start, end) with the field's
            // initial value (here: its random bytes) included, as the driver left it.
            ushort initial = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(start + offset));
            ushort sum = TcpFrames.Sum(expected.AsSpan(start), initial);
            ushort check = (ushort)~sum;
            BinaryPrimitives.WriteUInt16BigEndian(expected.AsSpan(start + offset), check == 0 ? (ushort)0xffff : check);

            Assert.True(Checksum.Complete(data, start, offset));
            Assert.Equal(expected, data);
        }
    }

    [Fact]
    public void Checksum_completion_refuses_a_field_outside_the_frame()
    {
        var data = new byte[40];
        Assert.False(Checksum.Complete(data, 30, 9));
        Assert.False(Checksum.Complete(data, 39, 0));
        Assert.Equal(new byte[40], data);
    }

    public enum Change { TcpHeaderLength, IpVersion, IpHeaderLength, Protocol, EtherType }

    [Theory]
    [InlineData(Change.TcpHeaderLength)]
    [InlineData(Change.IpVersion)]
    [InlineData(Change.IpHeaderLength)]
    [InlineData(Change.Protocol)]
    [InlineData(Change.EtherType)]
    public void A_copy_whose_headers_changed_since_the_transmit_check_is_not_segmented(Change change)
    {
        var frame = TcpFrames.Build(B, A, v6: false, payload: 5000);
        var header = TcpFrames.Header(v6: false, gsoSize: 1448);
        var features = VirtioFeature.Mask(VirtioNet.FCsum) | VirtioFeature.Mask(VirtioNet.FHostTso4);
        Assert.Equal(OffloadError.None, NetHeader.TryParse(header, frame.AsSpan(0, NetHeader.MaxHeadersLength), frame.Length, features, 1500, out var parsed));
        Assert.True(Segmenter.TryCreate(frame, parsed, out var ok));
        Assert.Equal(4, ok.Count);

        // The sender rewrote its buffer between the check and the receiver's copy.
        int l3 = TcpFrames.EthernetLength, l4 = l3 + TcpFrames.IPv4Length;
        switch (change)
        {
            case Change.TcpHeaderLength: frame[l4 + 12] = 15 << 4; break;
            case Change.IpVersion: frame[l3] = 0x65; break;
            case Change.IpHeaderLength: frame[l3] = 0x46; break;
            case Change.Protocol: frame[l3 + 9] = 17; break;
            case Change.EtherType: frame[12] = 0x86; frame[13] = 0xdd; break;
        }
        Assert.False(Segmenter.TryCreate(frame, parsed, out _));
    }
}
