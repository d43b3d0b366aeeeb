using System.Buffers.Binary;

namespace VhostUserVirtio.Devices.Net.Offload;

/// <summary>
/// Cuts a TCP GSO frame (TSO, VIRTIO_NET_HDR_GSO_TCPV4/6) into frames of at most gso_size payload,
/// each a complete packet: the headers copied, IPv4 total length, id and header checksum or IPv6
/// payload length rewritten, TCP sequence numbers advanced, FIN and PSH kept only on the last
/// segment and CWR only on the first, and every TCP checksum computed in full. Works on a copy of
/// the frame the caller owns; the copy's headers are checked again, since the sender may have
/// changed its buffer between the transmit check and the copy.
/// </summary>
public ref struct Segmenter
{
    private const byte TcpFin = 0x01, TcpPsh = 0x08, TcpCwr = 0x80;

    private readonly ReadOnlySpan<byte> _frame;
    private readonly int _l3, _l4, _headersEnd, _mss;
    private readonly bool _v4;
    private readonly uint _sequence;
    private readonly ushort _ipId;
    private int _offset;
    private int _index;

    private Segmenter(ReadOnlySpan<byte> frame, int l3, int l4, int headersEnd, int mss, bool v4)
    {
        _frame = frame;
        _l3 = l3;
        _l4 = l4;
        _headersEnd = headersEnd;
        _mss = mss;
        _v4 = v4;
        _sequence = BinaryPrimitives.ReadUInt32BigEndian(frame[(l4 + 4)..]);
        _ipId = v4 ? BinaryPrimitives.ReadUInt16BigEndian(frame[(l3 + 4)..]) : (ushort)0;
        _offset = headersEnd;
        _index = 0;
    }

    /// <summary>How many segments the frame makes.</summary>
    public readonly int Count => (_frame.Length - _headersEnd + _mss - 1) / _mss;

    /// <summary>Bytes of the longest segment: what a destination buffer must hold.</summary>
    public readonly int MaxSegmentLength => _headersEnd + _mss;

    /// <summary>
    /// Prepares to segment <paramref name="frame"/> (our copy) as <paramref name="header"/> says.
    /// False if the copy no longer matches what was checked at transmit.
    /// </summary>
    public static bool TryCreate(ReadOnlySpan<byte> frame, in NetHeader header, out Segmenter segmenter)
    {
        segmenter = default;
        if (!header.IsGso || header.GsoSize < NetHeader.MinGsoSize)
            return false;
        bool v4 = !header.IsIPv6;
        if (NetHeader.FindTcp(frame, v4, out int l3, out int l4, out int end) != OffloadError.None)
            return false;
        if (l3 != header.NetworkOffset || l4 != header.ChecksumStart || end != header.HeaderLength || end >= frame.Length)
            return false;
        segmenter = new Segmenter(frame, l3, l4, end, header.GsoSize, v4);
        return true;
    }

    /// <summary>Writes the next segment into <paramref name="destination"/>; false when all are out.</summary>
    public bool Next(Span<byte> destination, out int length)
    {
        length = 0;
        if (_offset >= _frame.Length)
            return false;
        int payload = Math.Min(_mss, _frame.Length - _offset);
        length = _headersEnd + payload;
        var segment = destination[..length];
        _frame[.._headersEnd].CopyTo(segment);
        _frame.Slice(_offset, payload).CopyTo(segment[_headersEnd..]);
        bool first = _index == 0, last = _offset + payload == _frame.Length;

        var ip = segment[_l3.._l4];
        if (_v4)
        {
            BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(length - _l3));
            BinaryPrimitives.WriteUInt16BigEndian(ip[4..], (ushort)(_ipId + _index));
            ip[10] = ip[11] = 0;
            Checksum.Store(ip[10..], Checksum.Add(ip));
        }
        else
        {
            BinaryPrimitives.WriteUInt16BigEndian(ip[4..], (ushort)(length - _l4));
        }

        var tcp = segment[_l4..];
        BinaryPrimitives.WriteUInt32BigEndian(tcp[4..], _sequence + (uint)(_offset - _headersEnd));
        byte flags = tcp[13];
        if (!last)
            flags &= unchecked((byte)~(TcpFin | TcpPsh));
        if (!first)
            flags &= unchecked((byte)~TcpCwr);
        tcp[13] = flags;
        tcp[NetHeader.TcpChecksumOffset] = tcp[NetHeader.TcpChecksumOffset + 1] = 0;
        // Pseudo-header: the addresses, the protocol and the TCP length (IPv4 and IPv6 alike below 64 KiB).
        ulong sum = Checksum.Add(_v4 ? ip.Slice(12, 8) : ip.Slice(8, 32));
        sum = Checksum.AddWord(sum, NetHeader.IpProtocolTcp);
        sum = Checksum.AddWord(sum, (ushort)tcp.Length);
        Checksum.Store(tcp[NetHeader.TcpChecksumOffset..], Checksum.Add(tcp, sum));

        _offset += payload;
        _index++;
        return true;
    }
}
