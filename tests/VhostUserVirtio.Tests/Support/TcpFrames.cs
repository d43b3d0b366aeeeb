using System.Buffers.Binary;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// TCP over IPv4 or IPv6 Ethernet frames as a Linux guest hands them to a virtio-net device with
/// offloads: a full IP header, TCP with the timestamp option, and the TCP checksum field holding the
/// pseudo-header's folded sum (NEEDS_CSUM). The checksum code here is a plain RFC 1071 loop of its
/// own, independent of the device's.
/// </summary>
public static class TcpFrames
{
    public const int EthernetLength = 14, IPv4Length = 20, IPv6Length = 40, TcpLength = 32;
    public const byte Fin = 0x01, Syn = 0x02, Psh = 0x08, Ack = 0x10, Cwr = 0x80;
    public const byte GsoTcpV4 = 1, GsoTcpV6 = 4;

    public static int NetworkLength(bool v6) => v6 ? IPv6Length : IPv4Length;
    public static int HeadersLength(bool v6) => EthernetLength + NetworkLength(v6) + TcpLength;

    /// <summary>Payload byte i of every test frame.</summary>
    public static byte PayloadByte(int i) => (byte)(i * 7 + 3);

    /// <summary>A frame whose TCP checksum is left to the device (pseudo-header sum in the field); IPv4's header checksum is complete.</summary>
    public static byte[] Build(string dst, string src, bool v6, int payload, uint sequence = 1000, byte flags = Ack | Psh, ushort ipId = 0x1234)
    {
        int l3 = EthernetLength, l4 = l3 + NetworkLength(v6);
        var f = new byte[l4 + TcpLength + payload];
        Devices.Switch.Mac.Parse(dst).Write(f);
        Devices.Switch.Mac.Parse(src).Write(f.AsSpan(6));
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), v6 ? (ushort)0x86dd : (ushort)0x0800);
        var ip = f.AsSpan(l3, l4 - l3);
        if (v6)
        {
            ip[0] = 0x60;
            BinaryPrimitives.WriteUInt16BigEndian(ip[4..], (ushort)(TcpLength + payload));
            ip[6] = 6;
            ip[7] = 64;
            for (int i = 0; i < 16; i++)
            {
                ip[8 + i] = (byte)(0xfd + i);
                ip[24 + i] = (byte)(0xfd + 2 * i);
            }
        }
        else
        {
            ip[0] = 0x45;
            BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)Math.Min(0xffff, IPv4Length + TcpLength + payload));
            BinaryPrimitives.WriteUInt16BigEndian(ip[4..], ipId);
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = 6;
            new byte[] { 10, 0, 0, 1, 10, 0, 0, 2 }.CopyTo(ip[12..]);
            BinaryPrimitives.WriteUInt16BigEndian(ip[10..], (ushort)~Sum(ip));
        }
        var tcp = f.AsSpan(l4);
        BinaryPrimitives.WriteUInt16BigEndian(tcp, 40000);
        BinaryPrimitives.WriteUInt16BigEndian(tcp[2..], 5201);
        BinaryPrimitives.WriteUInt32BigEndian(tcp[4..], sequence);
        BinaryPrimitives.WriteUInt32BigEndian(tcp[8..], 777);
        tcp[12] = (TcpLength / 4) << 4;
        tcp[13] = flags;
        BinaryPrimitives.WriteUInt16BigEndian(tcp[14..], 512);
        tcp[20] = 1; tcp[21] = 1; tcp[22] = 8; tcp[23] = 10; // NOP NOP timestamp
        for (int i = 0; i < payload; i++)
            tcp[TcpLength + i] = PayloadByte(i);
        // What Linux leaves for NEEDS_CSUM: the pseudo-header's sum, folded, not complemented.
        BinaryPrimitives.WriteUInt16BigEndian(tcp[16..], PseudoHeaderSum(f, v6, tcp.Length));
        return f;
    }

    /// <summary>The 10 offload bytes of a virtio-net header (plus num_buffers room): NEEDS_CSUM at the TCP checksum, and GSO when <paramref name="gsoSize"/> is set.</summary>
    public static byte[] Header(bool v6, ushort gsoSize = 0, byte? gsoType = null)
    {
        var h = new byte[NetFrontEnd.HeaderSize];
        h[0] = 1; // NEEDS_CSUM
        if (gsoSize != 0)
            h[1] = gsoType ?? (v6 ? GsoTcpV6 : GsoTcpV4);
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(2), (ushort)HeadersLength(v6));
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(4), gsoSize);
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(6), (ushort)(EthernetLength + NetworkLength(v6)));
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(8), 16);
        return h;
    }

    /// <summary>RFC 1071 sum of big-endian words, folded.</summary>
    public static ushort Sum(ReadOnlySpan<byte> data, uint sum = 0)
    {
        for (int i = 0; i < data.Length; i += 2)
            sum += (uint)(data[i] << 8 | (i + 1 < data.Length ? data[i + 1] : 0));
        while (sum > 0xffff)
            sum = (sum & 0xffff) + (sum >> 16);
        return (ushort)sum;
    }

    private static ushort PseudoHeaderSum(ReadOnlySpan<byte> frame, bool v6, int tcpLength)
    {
        var ip = frame[EthernetLength..];
        var addresses = v6 ? ip.Slice(8, 32) : ip.Slice(12, 8);
        return Sum(addresses, (uint)(6 + tcpLength));
    }

    /// <summary>Whether the frame's TCP checksum (and IPv4 header checksum) are right.</summary>
    public static bool ChecksumsValid(ReadOnlySpan<byte> frame, bool v6)
    {
        int l4 = EthernetLength + NetworkLength(v6);
        if (!v6 && Sum(frame.Slice(EthernetLength, IPv4Length)) != 0xffff)
            return false;
        var tcp = frame[l4..];
        return Sum(tcp, PseudoHeaderSum(frame, v6, tcp.Length)) == 0xffff;
    }

    public static uint Sequence(ReadOnlySpan<byte> frame, bool v6) =>
        BinaryPrimitives.ReadUInt32BigEndian(frame[(EthernetLength + NetworkLength(v6) + 4)..]);

    public static byte Flags(ReadOnlySpan<byte> frame, bool v6) => frame[EthernetLength + NetworkLength(v6) + 13];

    public static ReadOnlySpan<byte> Payload(ReadOnlySpan<byte> frame, bool v6) => frame[HeadersLength(v6)..];
}
