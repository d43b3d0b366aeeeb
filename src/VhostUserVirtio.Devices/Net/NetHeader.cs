using System.Buffers.Binary;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Devices.Net;

/// <summary>Why a transmitted virtio-net header's offload request was refused.</summary>
public enum OffloadError : byte
{
    None,
    /// <summary>NEEDS_CSUM without CSUM, TCPV4/TCPV6 without HOST_TSO4/6, or ECN without HOST_ECN.</summary>
    NotNegotiated,
    /// <summary>A flag other than NEEDS_CSUM (a driver must not set DATA_VALID or RSC_INFO on transmit).</summary>
    UnknownFlags,
    /// <summary>A gso_type other than NONE, TCPV4 and TCPV6 (UFO and UDP_L4 are not offered).</summary>
    UnsupportedGsoType,
    /// <summary>csum_start inside the Ethernet header, or csum_start + csum_offset + 2 beyond the frame.</summary>
    ChecksumOutsideFrame,
    /// <summary>A GSO frame without NEEDS_CSUM.</summary>
    GsoWithoutChecksum,
    /// <summary>gso_size below <see cref="NetHeader.MinGsoSize"/>, or segments larger than the sender's MTU.</summary>
    GsoSizeInvalid,
    /// <summary>gso_type's IP version is not the frame's (TCPV4 on IPv6, or not IP at all).</summary>
    GsoTypeMismatch,
    /// <summary>Not TCP directly over IP: another protocol, an IPv4 fragment, or IPv6 extension headers.</summary>
    NotTcp,
    /// <summary>IP or TCP header lengths that disagree with csum_start/csum_offset or with the frame (no payload, truncated).</summary>
    BadHeaders,
    /// <summary>A GSO frame longer than the largest frame.</summary>
    TooLong,
}

/// <summary>
/// The offload fields of a transmitted frame's virtio_net_hdr (VIRTIO 5.1.6.2), after
/// <see cref="TryParse"/> has checked them against the frame and the sender's features. Travels with
/// the <see cref="Frame"/> through the switch; default: no offload (a plain, complete frame).
/// For a GSO frame, <see cref="HeaderLength"/> and <see cref="NetworkOffset"/> are the values found
/// in the frame, not the driver's hdr_len hint.
/// </summary>
public readonly struct NetHeader
{
    /// <summary>Linux's smallest TCP MSS (tcp_min_snd_mss): bounds the segments one frame can turn into.</summary>
    public const int MinGsoSize = 48;
    /// <summary>Ethernet with one VLAN tag, IPv4 with options, TCP with options: the most a GSO frame's headers take.</summary>
    public const int MaxHeadersLength = 18 + 60 + 60;
    /// <summary>The offload fields' bytes at the start of a virtio-net header.</summary>
    public const int Length = 10;
    internal const int TcpChecksumOffset = 16;

    public byte Flags { get; init; }
    /// <summary>gso_type with its ECN bit.</summary>
    public byte GsoType { get; init; }
    public ushort HeaderLength { get; init; }
    public ushort GsoSize { get; init; }
    public ushort ChecksumStart { get; init; }
    public ushort ChecksumOffset { get; init; }
    /// <summary>Where the IP header starts (after Ethernet and an optional VLAN tag); GSO frames only.</summary>
    public byte NetworkOffset { get; init; }

    public bool IsNone => Flags == 0 && GsoType == 0;
    public bool NeedsChecksum => (Flags & VirtioNet.HdrFlagNeedsCsum) != 0;
    public bool IsGso => GsoType != VirtioNet.GsoNone;
    public bool IsIPv6 => (GsoType & ~VirtioNet.GsoEcn) == VirtioNet.GsoTcpV6;
    public bool Ecn => (GsoType & VirtioNet.GsoEcn) != 0;

    /// <summary>Writes the offload fields (not num_buffers) into a receive header.</summary>
    public void Write(Span<byte> header)
    {
        header[VirtioNet.HeaderFlagsOffset] = Flags;
        header[VirtioNet.HeaderGsoTypeOffset] = GsoType;
        BinaryPrimitives.WriteUInt16LittleEndian(header[VirtioNet.HeaderHdrLenOffset..], HeaderLength);
        BinaryPrimitives.WriteUInt16LittleEndian(header[VirtioNet.HeaderGsoSizeOffset..], GsoSize);
        BinaryPrimitives.WriteUInt16LittleEndian(header[VirtioNet.HeaderCsumStartOffset..], ChecksumStart);
        BinaryPrimitives.WriteUInt16LittleEndian(header[VirtioNet.HeaderCsumOffsetOffset..], ChecksumOffset);
    }

    /// <summary>
    /// Checks a transmitted header against the frame it came with. <paramref name="frameStart"/> is
    /// the caller's copy of the frame's first min(length, <see cref="MaxHeadersLength"/>) bytes;
    /// <paramref name="frameLength"/> the frame's length (a chain may claim up to 4 GiB);
    /// <paramref name="mtu"/> the sender's. Nothing is read twice: the result describes that copy.
    /// </summary>
    public static OffloadError TryParse(ReadOnlySpan<byte> header, ReadOnlySpan<byte> frameStart, long frameLength, ulong features, int mtu, out NetHeader result)
    {
        result = default;
        byte flags = header[VirtioNet.HeaderFlagsOffset];
        byte gsoType = header[VirtioNet.HeaderGsoTypeOffset];
        ushort gsoSize = BinaryPrimitives.ReadUInt16LittleEndian(header[VirtioNet.HeaderGsoSizeOffset..]);
        ushort csumStart = BinaryPrimitives.ReadUInt16LittleEndian(header[VirtioNet.HeaderCsumStartOffset..]);
        ushort csumOffset = BinaryPrimitives.ReadUInt16LittleEndian(header[VirtioNet.HeaderCsumOffsetOffset..]);

        if ((flags & ~VirtioNet.HdrFlagNeedsCsum) != 0)
            return OffloadError.UnknownFlags;
        bool needsCsum = flags != 0;
        if (needsCsum)
        {
            if (!VirtioFeature.Has(features, VirtioNet.FCsum))
                return OffloadError.NotNegotiated;
            // The addresses and EtherType are the switch's copy; a checksum may not write over them.
            if (csumStart < VirtioNet.EthernetHeader || csumStart + csumOffset + 2 > frameLength)
                return OffloadError.ChecksumOutsideFrame;
        }
        if (gsoType == VirtioNet.GsoNone)
        {
            result = new NetHeader { Flags = flags, ChecksumStart = csumStart, ChecksumOffset = csumOffset };
            return OffloadError.None;
        }

        int kind = gsoType & ~VirtioNet.GsoEcn;
        if (kind != VirtioNet.GsoTcpV4 && kind != VirtioNet.GsoTcpV6)
            return OffloadError.UnsupportedGsoType;
        bool v4 = kind == VirtioNet.GsoTcpV4;
        if (!VirtioFeature.Has(features, v4 ? VirtioNet.FHostTso4 : VirtioNet.FHostTso6) ||
            ((gsoType & VirtioNet.GsoEcn) != 0 && !VirtioFeature.Has(features, VirtioNet.FHostEcn)))
            return OffloadError.NotNegotiated;
        if (frameLength > Frame.MaxLength)
            return OffloadError.TooLong;
        if (!needsCsum)
            return OffloadError.GsoWithoutChecksum;

        var error = FindTcp(frameStart, v4, out int l3, out int l4, out int headersEnd);
        if (error != OffloadError.None)
            return error;
        if (csumStart != l4 || csumOffset != TcpChecksumOffset || headersEnd >= frameLength)
            return OffloadError.BadHeaders;
        // Each segment, as an IP packet, must fit the MTU the sender was given.
        if (gsoSize < MinGsoSize || headersEnd - l3 + gsoSize > mtu)
            return OffloadError.GsoSizeInvalid;
        result = new NetHeader
        {
            Flags = flags, GsoType = gsoType, HeaderLength = (ushort)headersEnd, GsoSize = gsoSize,
            ChecksumStart = csumStart, ChecksumOffset = csumOffset, NetworkOffset = (byte)l3,
        };
        return OffloadError.None;
    }

    /// <summary>
    /// Finds the IP and TCP headers of a frame that must be TCP over IPv4 (<paramref name="v4"/>) or
    /// IPv6: the IP header's offset, the TCP header's, and where the TCP header ends. Used on the
    /// transmit copy and again on every receiver's copy of the frame.
    /// </summary>
    internal static OffloadError FindTcp(ReadOnlySpan<byte> frame, bool v4, out int l3, out int l4, out int headersEnd)
    {
        l3 = l4 = headersEnd = 0;
        if (frame.Length < VirtioNet.EthernetHeader)
            return OffloadError.BadHeaders;
        int at = VirtioNet.EthernetHeader;
        ushort etherType = BinaryPrimitives.ReadUInt16BigEndian(frame[12..]);
        if (etherType == EtherTypeVlan)
        {
            if (frame.Length < at + 4)
                return OffloadError.BadHeaders;
            etherType = BinaryPrimitives.ReadUInt16BigEndian(frame[16..]);
            at += 4;
        }
        if (etherType != (v4 ? EtherTypeIPv4 : EtherTypeIPv6))
            return OffloadError.GsoTypeMismatch;
        l3 = at;
        if (v4)
        {
            if (frame.Length < l3 + 20)
                return OffloadError.BadHeaders;
            if (frame[l3] >> 4 != 4)
                return OffloadError.GsoTypeMismatch;
            int ihl = (frame[l3] & 0xf) * 4;
            if (ihl < 20)
                return OffloadError.BadHeaders;
            // A fragment (MF set or an offset) has no TCP header to segment by.
            if (frame[l3 + 9] != IpProtocolTcp || (BinaryPrimitives.ReadUInt16BigEndian(frame[(l3 + 6)..]) & 0x3fff) != 0)
                return OffloadError.NotTcp;
            l4 = l3 + ihl;
        }
        else
        {
            if (frame.Length < l3 + 40)
                return OffloadError.BadHeaders;
            if (frame[l3] >> 4 != 6)
                return OffloadError.GsoTypeMismatch;
            if (frame[l3 + 6] != IpProtocolTcp)
                return OffloadError.NotTcp;
            l4 = l3 + 40;
        }
        if (frame.Length < l4 + 20)
            return OffloadError.BadHeaders;
        int doff = (frame[l4 + 12] >> 4) * 4;
        if (doff < 20 || frame.Length < l4 + doff)
            return OffloadError.BadHeaders;
        headersEnd = l4 + doff;
        return OffloadError.None;
    }

    internal const ushort EtherTypeIPv4 = 0x0800;
    internal const ushort EtherTypeIPv6 = 0x86dd;
    internal const ushort EtherTypeVlan = 0x8100;
    internal const byte IpProtocolTcp = 6;

    public override string ToString() =>
        $"flags {Flags} gso_type {GsoType} hdr_len {HeaderLength} gso_size {GsoSize} csum_start {ChecksumStart} csum_offset {ChecksumOffset}";
}
