using System.Buffers.Binary;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// Just enough of an IPv4 host for a test driver to talk to a real guest: answers ARP requests and
/// ICMP echo requests for its address, builds ARP requests and echo requests, and recognises replies.
/// </summary>
public sealed class MiniHost(byte[] mac, byte[] ip)
{
    public byte[] Mac { get; } = mac;
    public byte[] Ip { get; } = ip;
    /// <summary>Peers learned from ARP (IP → MAC).</summary>
    public Dictionary<uint, byte[]> Neighbours { get; } = new();
    public List<ushort> EchoRepliesSeen { get; } = new();
    public int EchoRequestsAnswered { get; private set; }

    private const ushort EtherArp = 0x0806, EtherIpv4 = 0x0800;

    public static byte[] ParseIp(string text) => text.Split('.').Select(byte.Parse).ToArray();

    public byte[] ArpRequest(byte[] targetIp)
    {
        var f = new byte[60];
        Ethernet(f, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], EtherArp);
        Arp(f.AsSpan(14), 1, Mac, Ip, new byte[6], targetIp);
        return f;
    }

    public byte[] EchoRequest(byte[] dstMac, byte[] dstIp, ushort sequence)
    {
        var f = new byte[14 + 20 + 16];
        Ethernet(f, dstMac, EtherIpv4);
        Ipv4(f.AsSpan(14), Ip, dstIp, 8 + 8);
        var icmp = f.AsSpan(34);
        icmp[0] = 8; // echo request
        BinaryPrimitives.WriteUInt16BigEndian(icmp[4..], 0x5656);
        BinaryPrimitives.WriteUInt16BigEndian(icmp[6..], sequence);
        BinaryPrimitives.WriteUInt64BigEndian(icmp[8..], 0x0123456789abcdef);
        BinaryPrimitives.WriteUInt16BigEndian(icmp[2..], Checksum(icmp));
        return f;
    }

    /// <summary>Looks at one received frame: learns, records replies, and returns the answer to send, if any.</summary>
    public byte[]? Handle(ReadOnlySpan<byte> frame)
    {
        if (frame.Length < 42)
            return null;
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(frame[12..]);
        if (type == EtherArp)
        {
            var arp = frame[14..];
            ushort op = BinaryPrimitives.ReadUInt16BigEndian(arp[6..]);
            var senderMac = arp.Slice(8, 6).ToArray();
            var senderIp = arp.Slice(14, 4);
            Neighbours[BinaryPrimitives.ReadUInt32BigEndian(senderIp)] = senderMac;
            if (op == 1 && arp.Slice(24, 4).SequenceEqual(Ip))
            {
                var reply = new byte[60];
                Ethernet(reply, senderMac, EtherArp);
                Arp(reply.AsSpan(14), 2, Mac, Ip, senderMac, senderIp.ToArray());
                return reply;
            }
            return null;
        }
        if (type != EtherIpv4 || frame[23] != 1 || !frame.Slice(30, 4).SequenceEqual(Ip))
            return null;
        int ihl = (frame[14] & 0xf) * 4;
        int total = BinaryPrimitives.ReadUInt16BigEndian(frame[16..]);
        if (total < ihl + 8 || 14 + total > frame.Length)
            return null;
        var icmp = frame.Slice(14 + ihl, total - ihl);
        if (icmp[0] == 0)
        {
            EchoRepliesSeen.Add(BinaryPrimitives.ReadUInt16BigEndian(icmp[6..]));
            return null;
        }
        if (icmp[0] != 8)
            return null;
        var answer = new byte[14 + 20 + icmp.Length];
        Ethernet(answer, frame.Slice(6, 6).ToArray(), EtherIpv4);
        Ipv4(answer.AsSpan(14), Ip, frame.Slice(26, 4).ToArray(), icmp.Length);
        var out_ = answer.AsSpan(34);
        icmp.CopyTo(out_);
        out_[0] = 0;
        out_[2] = out_[3] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(out_[2..], Checksum(out_));
        EchoRequestsAnswered++;
        return answer;
    }

    private void Ethernet(Span<byte> f, ReadOnlySpan<byte> dst, ushort type)
    {
        dst.CopyTo(f);
        Mac.CopyTo(f[6..]);
        BinaryPrimitives.WriteUInt16BigEndian(f[12..], type);
    }

    private static void Arp(Span<byte> a, ushort op, ReadOnlySpan<byte> sha, ReadOnlySpan<byte> spa, ReadOnlySpan<byte> tha, ReadOnlySpan<byte> tpa)
    {
        BinaryPrimitives.WriteUInt16BigEndian(a, 1);          // Ethernet
        BinaryPrimitives.WriteUInt16BigEndian(a[2..], EtherIpv4);
        a[4] = 6;
        a[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(a[6..], op);
        sha.CopyTo(a[8..]);
        spa.CopyTo(a[14..]);
        tha.CopyTo(a[18..]);
        tpa.CopyTo(a[24..]);
    }

    private static void Ipv4(Span<byte> h, ReadOnlySpan<byte> src, ReadOnlySpan<byte> dst, int payload)
    {
        h[..20].Clear();
        h[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(h[2..], (ushort)(20 + payload));
        h[8] = 64;  // TTL
        h[9] = 1;   // ICMP
        src.CopyTo(h[12..]);
        dst.CopyTo(h[16..]);
        BinaryPrimitives.WriteUInt16BigEndian(h[10..], Checksum(h[..20]));
    }

    private static ushort Checksum(ReadOnlySpan<byte> data)
    {
        uint sum = 0;
        for (int i = 0; i + 1 < data.Length; i += 2)
            sum += BinaryPrimitives.ReadUInt16BigEndian(data[i..]);
        if ((data.Length & 1) != 0)
            sum += (uint)data[^1] << 8;
        while (sum >> 16 != 0)
            sum = (sum & 0xffff) + (sum >> 16);
        return (ushort)~sum;
    }
}
