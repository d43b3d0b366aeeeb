using System.Buffers.Binary;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Group.Transport;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Fuzz;

/// <summary>
/// The seed corpus, made by code so it follows the input formats: per target a few valid inputs
/// (a bring-up, rings with real chains, real commands) for the fuzzer to start from.
/// </summary>
public static class Seeds
{
    public static IReadOnlyList<(string Name, byte[] Bytes)> For(string target) => target switch
    {
        "message" => Message(),
        "split-ring" => Ring(packed: false),
        "packed-ring" => Ring(packed: true),
        "admin" => Admin(),
        "transport" => Transport(),
        "net-tx" => NetTx(),
        _ => throw new ArgumentException($"no target '{target}'", nameof(target)),
    };

    // ---- message: set-up byte, then (fd byte, header, payload)*.
    private const byte NoFd = 0, OneEventFd = 0x01, OneSignalledEventFd = 0x81, OneMemFd = 0xa1;

    private static List<(string, byte[])> Message()
    {
        const ulong Features = (1UL << 32) | (1UL << 30);
        var bringUp = new List<byte[]>
        {
            Msg(FrontendRequest.GetFeatures, NoFd, []),
            Msg(FrontendRequest.SetOwner, NoFd, []),
            Msg(FrontendRequest.GetProtocolFeatures, NoFd, []),
            Msg(FrontendRequest.SetProtocolFeatures, NoFd, U64((ulong)VhostUserBackend.CoreProtocolFeatures)),
            Msg(FrontendRequest.SetFeatures, NoFd, U64(Features), needReply: true),
            Msg(FrontendRequest.SetMemTable, OneMemFd, MemoryTable(), needReply: true),
        };
        for (uint q = 0; q < 2; q++)
        {
            ulong ring = 0x1000 * (4 * q + 1);
            bringUp.Add(Msg(FrontendRequest.SetVringNum, NoFd, State(q, 16)));
            bringUp.Add(Msg(FrontendRequest.SetVringAddr, NoFd, Addr(q, 0x7000_0000_0000 + ring, 0x7000_0000_0000 + ring + 0x2000, 0x7000_0000_0000 + ring + 0x1000)));
            bringUp.Add(Msg(FrontendRequest.SetVringBase, NoFd, State(q, 0)));
            bringUp.Add(Msg(FrontendRequest.SetVringCall, OneEventFd, U64(q)));
            bringUp.Add(Msg(FrontendRequest.SetVringKick, OneSignalledEventFd, U64(q)));
            bringUp.Add(Msg(FrontendRequest.SetVringEnable, NoFd, State(q, 1), needReply: true));
        }
        var tearDown = new[] { Msg(FrontendRequest.GetVringBase, NoFd, State(0, 0)), Msg(FrontendRequest.GetVringBase, NoFd, State(1, 0)) };
        return
        [
            ("echo-bring-up", [0x02, .. bringUp.SelectMany(m => m), .. tearDown.SelectMany(m => m)]),
            ("net-bring-up", [0x01, .. bringUp.SelectMany(m => m), .. tearDown.SelectMany(m => m)]),
            ("net-config", [0x21, .. Msg(FrontendRequest.GetProtocolFeatures, NoFd, []),
                .. Msg(FrontendRequest.SetProtocolFeatures, NoFd, U64((ulong)(VhostUserBackend.CoreProtocolFeatures | ProtocolFeatures.Config))),
                .. Msg(FrontendRequest.GetConfig, NoFd, [0, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, .. new byte[12]]),
                .. Msg(FrontendRequest.SetStatus, NoFd, U64(0xf)), .. Msg(FrontendRequest.GetQueueNum, NoFd, [])]),
            ("features-only", [0x00, .. Msg(FrontendRequest.GetFeatures, NoFd, [])]),
        ];
    }

    private static byte[] Msg(FrontendRequest request, byte fds, byte[] payload, bool needReply = false)
    {
        var m = new byte[1 + MessageHeader.Length + payload.Length];
        m[0] = fds;
        new MessageHeader((uint)request, MessageHeader.Version | (needReply ? MessageHeader.NeedReplyFlag : 0), (uint)payload.Length).Write(m.AsSpan(1));
        payload.CopyTo(m, 1 + MessageHeader.Length);
        return m;
    }

    private static byte[] U64(ulong value) => BitConverter.GetBytes(value);

    private static byte[] State(uint index, uint num)
    {
        var p = new byte[8];
        new VringState(index, num).Write(p);
        return p;
    }

    private static byte[] MemoryTable()
    {
        var p = new byte[8 + 32];
        BinaryPrimitives.WriteUInt32LittleEndian(p, 1);
        BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(8), 0);                       // guest address
        BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(16), MessageTarget.MemFdSize); // size
        BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(24), 0x7000_0000_0000);       // front end's address
        return p;
    }

    private static byte[] Addr(uint index, ulong desc, ulong used, ulong avail)
    {
        var p = new byte[40];
        BinaryPrimitives.WriteUInt32LittleEndian(p, index);
        BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(8), desc);
        BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(16), used);
        BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(24), avail);
        return p;
    }

    // ---- rings: size selector, flags, base, used-log address, steps, memory image.
    private static List<(string, byte[])> Ring(bool packed)
    {
        const int Size = 8;
        var seeds = new List<(string, byte[])>();
        foreach (var (name, flags, indirect) in new[] { ("plain", (byte)0, false), ("indirect", (byte)1, true), ("event-idx-logged", (byte)0x0e, false) })
        {
            var image = new byte[0x2000];
            // Chains: one readable + one writable buffer each (or, with indirect, one table of two).
            for (int c = 0; c < 4; c++)
            {
                ulong buffer = 0x1000 + 0x200 * (ulong)c;
                if (indirect && c % 2 == 1)
                {
                    ulong table = 0x1800 + 0x40 * (ulong)c;
                    RingDescriptor(image, (int)table, buffer, 64, 0, 0, packed);
                    RingDescriptor(image, (int)table + 16, buffer + 0x100, 128, PackedRing.DescWrite, 0, packed, next: 1);
                    RingDescriptor(image, 16 * (2 * c), table, 32, PackedRing.DescIndirect, (ushort)(2 * c), packed, avail: true);
                    continue;
                }
                RingDescriptor(image, 16 * (2 * c), buffer, 64, PackedRing.DescNext, (ushort)(2 * c), packed, next: (ushort)(2 * c + 1), avail: true);
                RingDescriptor(image, 16 * (2 * c + 1), buffer + 0x100, 128, PackedRing.DescWrite, (ushort)(2 * c), packed, avail: true);
            }
            ushort @base = 0;
            if (!packed)
            {
                int avail = 16 * Size;
                BinaryPrimitives.WriteUInt16LittleEndian(image.AsSpan(avail + 2), 4); // avail idx
                for (int c = 0; c < 4; c++)
                    BinaryPrimitives.WriteUInt16LittleEndian(image.AsSpan(avail + 4 + 2 * c), (ushort)(2 * c));
            }
            else
            {
                @base = PackedRing.WrapBit;
                // Packed chains are consecutive slots: the indirect ones take one slot, so pack them.
                if (indirect)
                    image.AsSpan(0, 16 * Size).Clear();
                int slot = 0;
                for (int c = 0; c < 4 && indirect; c++)
                {
                    ulong buffer = 0x1000 + 0x200 * (ulong)c;
                    if (c % 2 == 1)
                    {
                        RingDescriptor(image, 16 * slot++, 0x1800 + 0x40 * (ulong)c, 32, PackedRing.DescIndirect, (ushort)c, packed, avail: true);
                        continue;
                    }
                    RingDescriptor(image, 16 * slot++, buffer, 64, PackedRing.DescNext, (ushort)c, packed, avail: true);
                    RingDescriptor(image, 16 * slot++, buffer + 0x100, 128, PackedRing.DescWrite, (ushort)c, packed, avail: true);
                }
            }
            byte[] steps = [1, 1, 2, 1, 3 | 8, 0, 4, 4 | 16, 6 | 24, 5 | 40, 0, 3];
            var head = new byte[4 + 8 + 1];
            head[0] = 3; // size 8
            head[1] = flags;
            BinaryPrimitives.WriteUInt16LittleEndian(head.AsSpan(2), @base);
            BinaryPrimitives.WriteUInt64LittleEndian(head.AsSpan(4), 0x5000);
            head[12] = (byte)steps.Length;
            seeds.Add((name, [.. head, .. steps, .. image]));
        }
        return seeds;
    }


    /// <summary>A descriptor in either layout: split (addr, len, flags, next) or packed (addr, len, id, flags with the avail bit).</summary>
    private static void RingDescriptor(byte[] image, int at, ulong address, uint length, ushort flags, ushort id, bool packed, ushort next = 0, bool avail = false)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(at), address);
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(at + 8), length);
        if (packed)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(image.AsSpan(at + 12), id);
            BinaryPrimitives.WriteUInt16LittleEndian(image.AsSpan(at + 14), (ushort)(flags | (avail ? PackedRing.DescAvail : 0)));
        }
        else
        {
            BinaryPrimitives.WriteUInt16LittleEndian(image.AsSpan(at + 12), flags);
            BinaryPrimitives.WriteUInt16LittleEndian(image.AsSpan(at + 14), next);
        }
    }

    // ---- admin and transport: (shape, room u16, length u16, request)*.
    private static byte[] Command(byte shape, ushort room, byte[] request)
    {
        var c = new byte[5 + request.Length];
        c[0] = shape;
        BinaryPrimitives.WriteUInt16LittleEndian(c.AsSpan(1), room);
        BinaryPrimitives.WriteUInt16LittleEndian(c.AsSpan(3), (ushort)request.Length);
        request.CopyTo(c, 5);
        return c;
    }

    private static byte[] AdminRequest(AdminOpcode opcode, AdminGroupType group, ulong member, byte[] data)
    {
        var r = new byte[24 + data.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(r, (ushort)opcode);
        BinaryPrimitives.WriteUInt16LittleEndian(r.AsSpan(2), (ushort)group);
        BinaryPrimitives.WriteUInt64LittleEndian(r.AsSpan(16), member);
        data.CopyTo(r, 24);
        return r;
    }

    private static List<(string, byte[])> Admin()
    {
        var all = new byte[16];
        all.AsSpan().Fill(0xff);
        var sr = AdminGroupType.SrIov;
        return
        [
            ("list", [.. Command(4, 64, AdminRequest(AdminOpcode.ListQuery, sr, 0, [])), .. Command(0, 8, AdminRequest(AdminOpcode.ListUse, sr, 0, all))]),
            ("legacy", [.. Command(4, 8, AdminRequest(AdminOpcode.ListUse, sr, 0, all)),
                .. Command(5, 12, AdminRequest(AdminOpcode.LegacyCommonCfgRead, sr, 1, [18, 0, 0, 0, 0, 0, 0, 0])),
                .. Command(1, 8, AdminRequest(AdminOpcode.LegacyCommonCfgWrite, sr, 1, [18, 0, 0, 0, 0, 0, 0, 0, 1])),
                .. Command(4, 16, AdminRequest(AdminOpcode.LegacyDevCfgRead, sr, 2, [0, 0, 0, 0, 0, 0, 0, 0])),
                .. Command(4, 64, AdminRequest(AdminOpcode.LegacyNotifyInfo, sr, 1, []))]),
            ("members", [.. Command(4, 8, AdminRequest(AdminOpcode.ListUse, sr, 0, all)),
                .. Command(4, 128, AdminRequest(AdminOpcode.MemberSocket, sr, 1, new byte[8])),
                .. Command(4, 64, AdminRequest(AdminOpcode.MemberResourceAttrs, sr, 0, [])),
                .. Command(4, 64, AdminRequest(AdminOpcode.NetMemberCtrl, sr, 1, new byte[16]))]),
            ("self", [.. Command(4, 64, AdminRequest(AdminOpcode.CapIdListQuery, AdminGroupType.Self, 0, [])),
                .. Command(4, 256, AdminRequest(AdminOpcode.DeviceCapGet, AdminGroupType.Self, 0, new byte[8]))]),
        ];
    }

    private static byte[] TransportRequest(ulong id, ushort cls, ushort command, byte[] data)
    {
        var r = new byte[12 + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(r, id);
        BinaryPrimitives.WriteUInt16LittleEndian(r.AsSpan(8), cls);
        BinaryPrimitives.WriteUInt16LittleEndian(r.AsSpan(10), command);
        data.CopyTo(r, 12);
        return r;
    }

    private static List<(string, byte[])> Transport()
    {
        static byte[] T(ulong id, ushort cls, ushort command, byte[] data, ushort room = 64) =>
            Command(4, room, TransportRequest(id, cls, command, data));
        byte[] create = T(0, TransportCommand.DeviceClass, TransportCommand.DevCreate, [1, 0, 0, 0, 0, 0, 0, 0]);
        byte[] window = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(window.AsSpan(8), 0x10000);
        return
        [
            ("create-list", [.. create, .. T(0, TransportCommand.DeviceClass, TransportCommand.DevList, [])]),
            ("device", [.. create,
                .. T(1, TransportCommand.DeviceClass, TransportCommand.DevInfo, []),
                .. T(1, TransportCommand.DeviceClass, TransportCommand.DmaWindowSet, window),
                .. T(1, TransportCommand.FeatureClass, TransportCommand.DevFeaturesGet, []),
                .. T(1, TransportCommand.FeatureClass, TransportCommand.DrvFeaturesSet, [0, 0, 0, 0, 1, 0, 0, 0, .. new byte[8]]),
                .. T(1, TransportCommand.StatusClass, TransportCommand.StatusSet, [0xb, 0, 0, 0, 0, 0, 0, 0]),
                .. T(1, TransportCommand.ConfigClass, TransportCommand.CfgRead, [0, 0, 0, 0, 6, 0, 0, 0]),
                .. T(1, TransportCommand.QueueClass, TransportCommand.VqInfo, new byte[8]),
                .. T(1, TransportCommand.QueueClass, TransportCommand.VqGet, new byte[8]),
                .. T(1, TransportCommand.MsiClass, TransportCommand.MsiGet, new byte[8]),
                .. T(0, TransportCommand.NotifyClass, TransportCommand.NotifyInfo, []),
                .. T(1, TransportCommand.DeviceClass, TransportCommand.DevDestroy, [])]),
            ("limit", [.. create, .. create, .. create, .. create, .. create]),
        ];
    }

    // ---- net-tx: selector, then (shape, length u16, three split points u16, header + frame)*.
    private static List<(string, byte[])> NetTx()
    {
        const byte Fix = NetTxTarget.FixAddresses;
        byte[] udp = NetFrame(Ipv4Udp(200), flags: 0, gso: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0);
        byte[] csum = NetFrame(Ipv4Udp(300), flags: VirtioNet.HdrFlagNeedsCsum, gso: 0, hdrLen: 0, gsoSize: 0, csumStart: 34, csumOffset: 6);
        byte[] tso = NetFrame(Ipv4Tcp(3000), flags: VirtioNet.HdrFlagNeedsCsum, gso: VirtioNet.GsoTcpV4, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16);
        const byte All = NetTxTarget.SenderOffloads | NetTxTarget.SenderMergeable | NetTxTarget.ReceiverMergeable;
        return
        [
            ("udp", [0, .. TxChain(Fix, udp, 0, 0, 0), .. TxChain(Fix | NetTxTarget.ToBroadcast | 1, udp, 12, 0, 0)]),
            ("checksum", [All, .. TxChain(Fix | 2, csum, 12, 40, 0)]),
            ("tso-segmented", [All, .. TxChain(Fix | 1, tso, 12, 0, 0)]),
            ("tso-segmented-small", [All | 0x20, .. TxChain(Fix | 3 | NetTxTarget.Indirect, tso, 6, 66, 1000)]),
            ("tso-whole", [All | NetTxTarget.ReceiverOffloads | 0x60, .. TxChain(Fix | NetTxTarget.TrailingWritable, tso, 0, 0, 0)]),
            // Only the headers given: the rest of the 65,635 bytes read as zeros, past the largest frame.
            ("gso-past-64k", [All, Fix | NetTxTarget.Long, 100, 0, 0, 0, 0, 0, 0, 0, .. tso.AsSpan(0, 100)]),
            ("split-num-buffers", [NetTxTarget.SenderMergeable | NetTxTarget.ReceiverMergeable | 0x40, .. TxChain(Fix, NetFrame(Ipv4Udp(1400), 0, 0, 0, 0, 0, 0), 0, 0, 0)]),
        ];
    }

    private static byte[] TxChain(int shape, byte[] bytes, ushort cut1, ushort cut2, ushort cut3)
    {
        var c = new byte[9 + bytes.Length];
        c[0] = (byte)shape;
        BinaryPrimitives.WriteUInt16LittleEndian(c.AsSpan(1), (ushort)bytes.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(c.AsSpan(3), cut1);
        BinaryPrimitives.WriteUInt16LittleEndian(c.AsSpan(5), cut2);
        BinaryPrimitives.WriteUInt16LittleEndian(c.AsSpan(7), cut3);
        bytes.CopyTo(c, 9);
        return c;
    }

    /// <summary>A 12-byte virtio-net header in front of <paramref name="frame"/> (its addresses are fixed up by the target).</summary>
    private static byte[] NetFrame(byte[] frame, byte flags, byte gso, ushort hdrLen, ushort gsoSize, ushort csumStart, ushort csumOffset)
    {
        var b = new byte[VirtioNet.HeaderSize + frame.Length];
        b[0] = flags;
        b[1] = gso;
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2), hdrLen);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(4), gsoSize);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(6), csumStart);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(8), csumOffset);
        frame.CopyTo(b, VirtioNet.HeaderSize);
        return b;
    }

    private static byte[] Ipv4(int protocol, int l4Length)
    {
        var f = new byte[14 + 20 + l4Length];
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x0800);
        f[14] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(16), (ushort)(20 + l4Length));
        f[22] = 64;
        f[23] = (byte)protocol;
        byte[] addresses = [10, 0, 0, 1, 10, 0, 0, 2];
        addresses.CopyTo(f, 26);
        uint sum = 0;
        for (int i = 14; i < 34; i += 2)
            sum += BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(i));
        while (sum > 0xffff)
            sum = (sum & 0xffff) + (sum >> 16);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(24), (ushort)~sum);
        return f;
    }

    private static byte[] Ipv4Udp(int payload)
    {
        var f = Ipv4(17, 8 + payload);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(34), 4000);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(36), 5000);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(38), (ushort)(8 + payload));
        for (int i = 42; i < f.Length; i++)
            f[i] = (byte)i;
        return f;
    }

    private static byte[] Ipv4Tcp(int payload)
    {
        var f = Ipv4(6, 20 + payload);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(34), 4000);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(36), 5000);
        BinaryPrimitives.WriteUInt32BigEndian(f.AsSpan(38), 1000);
        f[46] = 0x50;   // data offset 5 words
        f[47] = 0x18;   // PSH, ACK
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(48), 0xffff);
        for (int i = 54; i < f.Length; i++)
            f[i] = (byte)i;
        return f;
    }
}
