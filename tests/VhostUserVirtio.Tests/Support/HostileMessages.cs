using System.Buffers.Binary;
using System.Text;
using CsCheck;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Tests.Support;

/// <summary>How a hostile step ends: in sync with the back end, pipelined, or with the connection cut somewhere.</summary>
public enum Ending
{
    /// <summary>Then GET_FEATURES and wait for its answer: the message was handled.</summary>
    Sync,
    /// <summary>The next message follows at once.</summary>
    Pipelined,
    /// <summary>Part of the header (descriptors attached to it), then disconnect.</summary>
    CutInHeader,
    /// <summary>The header (and descriptors), then disconnect.</summary>
    CutAfterHeader,
    /// <summary>The header and half the payload, then disconnect.</summary>
    CutInPayload,
    /// <summary>The whole message with its descriptors, then disconnect before any reply.</summary>
    CutAfterMessage,
    /// <summary>A header whose size promises more payload than ever comes, then disconnect.</summary>
    SizeLies,
}

/// <summary>One hostile step: a message (any code, flags, payload, descriptors) or a scribble on a ring followed by kicks.</summary>
public abstract record HostileStep;

public sealed record HostileMessage(uint Request, uint Flags, byte[] Payload, FdSpec[] Fds, Ending Ending) : HostileStep
{
    public override string ToString()
    {
        var name = Enum.IsDefined(typeof(FrontendRequest), Request) ? ((FrontendRequest)Request).ToString() : $"request {Request}";
        var hex = Convert.ToHexString(Payload.AsSpan(0, Math.Min(Payload.Length, 48))) + (Payload.Length > 48 ? "…" : "");
        return $"{name} flags 0x{Flags:x} payload[{Payload.Length}] {hex} fds [{string.Join(", ", Fds)}] {Ending}";
    }
}

/// <summary>Writes descriptors and avail entries on one of its rings (whatever values), then signals every doorbell it holds.</summary>
public sealed record RingScribble(int Queue, (ulong Address, uint Length, ushort Flags, ushort Next)[] Descriptors, ushort[] Heads, ushort AvailIndex) : HostileStep
{
    public override string ToString() =>
        $"scribble on queue {Queue}: {Descriptors.Length} descriptors " +
        string.Join(" ", Descriptors.Take(4).Select(d => $"(0x{d.Address:x},{d.Length},0x{d.Flags:x},{d.Next})")) +
        $", heads [{string.Join(",", Heads)}], avail idx {AvailIndex}, kick";
}

/// <summary>
/// Well-formed frames on its transmit ring (queue 1), then a kick: from its own MAC or another
/// member's (<paramref name="SourceVf"/>), to a member or to everyone (<paramref name="DestinationVf"/> -1).
/// </summary>
public sealed record Transmit(int Frames, int SourceVf, int DestinationVf) : HostileStep
{
    public override string ToString() =>
        $"transmit {Frames} frame(s) from VF{SourceVf}'s MAC to {(DestinationVf < 0 ? "broadcast" : $"VF{DestinationVf}'s MAC")}, kick";
}

/// <summary>One connection's worth of hostility: optionally a proper bring-up first, then the steps.</summary>
public sealed record HostileSequence(bool BringUp, HostileStep[] Steps)
{
    public override string ToString()
    {
        var text = new StringBuilder(BringUp ? "after a proper bring-up:\n" : "on a fresh connection:\n");
        for (int i = 0; i < Steps.Length; i++)
            text.AppendLine($"  {i}: {Steps[i]}");
        return text.ToString();
    }
}

/// <summary>
/// CsCheck generators of valid-looking but hostile vhost-user messages for a virtio-net VF with
/// <see cref="Queues"/> queues and a <see cref="HostileRam"/>: the real request codes and payload
/// layouts, with plausible and boundary values (indexes 0..queues and a bit beyond, sizes around
/// powers of two, addresses inside and outside the memory table, features with and without known
/// bits) and descriptors of every kind, or missing, or too many.
/// </summary>
public static class HostileMessages
{
    /// <summary>A VF with one queue pair: receive, transmit, control.</summary>
    public const int Queues = 3;

    private const uint V = MessageHeader.Version;
    private const uint NeedReply = MessageHeader.Version | MessageHeader.NeedReplyFlag;

    /// <summary>What a net VF offers, as a driver would want it; random subsets of it are plausible.</summary>
    private const ulong KnownFeatures = (1UL << 32) | (1UL << 30) | (1UL << 29) | (1UL << 28) | (1UL << 23) | (1UL << 18) |
                                        (1UL << 17) | (1UL << 16) | (1UL << 15) | (1UL << 5) | (1UL << 3);

    public static readonly Gen<uint> Index = Gen.Frequency(
        (8, Gen.UInt[0, Queues - 1]),
        (3, Gen.UInt[Queues, Queues + 2]),
        (1, Gen.OneOfConst(255u, 256u, 0x1_0000u, uint.MaxValue)));

    /// <summary>Around powers of two: 2^k - 1, 2^k, 2^k + 1.</summary>
    private static readonly Gen<uint> NearPowerOfTwo =
        Gen.Select(Gen.Int[0, 17], Gen.Int[-1, 1], (k, d) => (uint)Math.Max(0, (1L << k) + d));

    public static readonly Gen<uint> QueueSize = Gen.Frequency(
        (6, Gen.Int[0, 10].Select(k => 1u << k)),
        (3, NearPowerOfTwo),
        (1, Gen.OneOfConst(0u, 2048u, 32768u, 65536u, uint.MaxValue)));

    /// <summary>Front-end virtual addresses: mostly inside A or B, some at their edges, some far outside.</summary>
    public static readonly Gen<ulong> UserAddress = Gen.Frequency(
        (6, Gen.Int[0, (int)(HostileRam.RegionSize / 16) - 1].Select(i => HostileRam.UvaA + (ulong)i * 16)),
        (2, Gen.Int[0, (int)(HostileRam.RegionSize / 16) - 1].Select(i => HostileRam.UvaB + (ulong)i * 16)),
        (2, Gen.Select(Gen.OneOfConst(HostileRam.UvaA, HostileRam.UvaB, HostileRam.UvaB + HostileRam.RegionSize), Gen.Int[-64, 64],
            (b, d) => b + (ulong)d)),
        (1, Gen.ULong[0, 2 * HostileRam.RegionSize]), // a guest physical address where a virtual one belongs
        (1, Gen.OneOfConst(0UL, ulong.MaxValue, ulong.MaxValue - 15, 1UL << 63)),
        (1, Gen.ULong));

    /// <summary>Guest physical addresses for buffers: mostly in the buffer area, some at edges or unmapped.</summary>
    public static readonly Gen<ulong> BufferAddress = Gen.Frequency(
        (6, Gen.ULong[HostileRam.BufferArea, 2 * HostileRam.RegionSize - 2048]),
        (2, Gen.Select(Gen.OneOfConst(HostileRam.GpaB, 2 * HostileRam.RegionSize), Gen.Int[-64, 64], (b, d) => b + (ulong)d)),
        (1, Gen.OneOfConst(0UL, ulong.MaxValue - 15, 1UL << 40)),
        (1, Gen.ULong));

    private static readonly Gen<ulong> Features = Gen.Frequency(
        (5, Gen.ULong.Select(r => r & KnownFeatures)),
        (2, Gen.Select(Gen.ULong, Gen.Int[0, 63], (r, bit) => (r & KnownFeatures) | (1UL << bit))),
        (1, Gen.ULong));

    private static readonly Gen<ulong> ProtocolFeatureBits = Gen.Frequency(
        (5, Gen.ULong.Select(r => r & 0x1_ffff)),
        (1, Gen.Select(Gen.ULong, Gen.Int[17, 63], (r, bit) => (r & 0x1_ffff) | (1UL << bit))));

    private static readonly Gen<FdKind> SignalKind = Gen.Frequency(
        (12, Gen.Const(FdKind.EventFd)),
        (1, Gen.Const(FdKind.SaturatedEventFd)),
        (1, Gen.Const(FdKind.PipeReadEnd)),
        (1, Gen.Const(FdKind.PipeReadEndAtEof)),
        (1, Gen.Const(FdKind.PipeWriteEnd)),
        (1, Gen.Const(FdKind.FullPipe)),
        (1, Gen.Const(FdKind.Socket)),
        (1, Gen.Const(FdKind.SmallMemFd)));

    private static readonly Gen<FdSpec> AnyFd = Gen.Frequency(
        (3, SignalKind.Select(k => new FdSpec(k))),
        (1, Gen.OneOfConst(new FdSpec(FdKind.RamA), new FdSpec(FdKind.RamB), new FdSpec(FdKind.FreshMemFd, 1 << 16))));

    /// <summary>The descriptors a message should carry, mostly as they should be, sometimes one missing, one extra or all wrong.</summary>
    private static Gen<FdSpec[]> Descriptors(FdSpec[] expected) => Gen.Frequency(
        (12, Gen.Const(expected)),
        (1, Gen.Const(expected.Length > 0 ? expected[..^1] : expected)),
        (1, AnyFd.Select(extra => expected.Append(extra).ToArray())),
        (1, AnyFd.Array[0, 3]));

    /// <summary>A region and the descriptor that backs it: A or B as they are, or sized, placed and backed in plausible and broken ways.</summary>
    private static readonly Gen<(MemoryRegionDescription Region, FdSpec Fd)> Region = Gen.Frequency(
        (5, Gen.Const((HostileRam.A, new FdSpec(FdKind.RamA)))),
        (3, Gen.Const((HostileRam.B, new FdSpec(FdKind.RamB)))),
        (2, Gen.Select(Gen.Int[12, 21], Gen.ULong[2, 64], Gen.ULong[0, 0xffff], Gen.OneOfConst(0UL, 4096UL, 1UL, 0x1234UL),
            (k, gpaMiB, uvaPage, offset) =>
            {
                ulong size = 1UL << k;
                return (new MemoryRegionDescription(gpaMiB << 20, size, 0x7d00_0000_0000 + (uvaPage << 12), offset),
                    new FdSpec(FdKind.FreshMemFd, (long)(size + offset)));
            })),
        (1, Gen.Select(NearPowerOfTwo, Gen.OneOfConst(0UL, HostileRam.RegionSize, HostileRam.RegionSize - 1, ulong.MaxValue - 0xfff),
            (size, offset) => (HostileRam.A with { MemorySize = size << 4, MmapOffset = offset }, new FdSpec(FdKind.RamA)))),
        (1, Gen.OneOfConst(
            (HostileRam.A with { GuestPhysAddr = ulong.MaxValue - 0xfff }, new FdSpec(FdKind.RamA)),
            (HostileRam.A with { UserspaceAddr = ulong.MaxValue - 0xfff }, new FdSpec(FdKind.RamA)),
            (HostileRam.A with { MemorySize = 0 }, new FdSpec(FdKind.RamA)),
            (HostileRam.B with { GuestPhysAddr = HostileRam.GpaA + 0x1000 }, new FdSpec(FdKind.RamB)),
            (HostileRam.B with { UserspaceAddr = HostileRam.UvaA }, new FdSpec(FdKind.RamB)))));

    private static byte[] U64(ulong value) => BitConverter.GetBytes(value);

    private static byte[] State(uint index, uint num)
    {
        var p = new byte[VringState.Size];
        new VringState(index, num).Write(p);
        return p;
    }

    private static Gen<(byte[], FdSpec[])> NoFds(Gen<byte[]> payload) => payload.Select(p => (p, Array.Empty<FdSpec>()));

    private static readonly Gen<(byte[] Payload, FdSpec[] Fds)> MemTable =
        Gen.Select(Region.Array[1, 3], Gen.Frequency((10, Gen.Const(0)), (1, Gen.OneOfConst(-1, 1, -100, 8))), (regions, skew) =>
        {
            var p = MemoryTablePayload.Write(regions.Select(r => r.Region).ToArray());
            BinaryPrimitives.WriteUInt32LittleEndian(p, (uint)(regions.Length + skew));
            return (p, regions.Select(r => r.Fd).ToArray());
        }).SelectMany(m => Descriptors(m.Item2).Select(fds => (m.p, fds)));

    private static readonly Gen<(byte[] Payload, FdSpec[] Fds)> SingleRegion =
        Region.SelectMany(r => Descriptors([r.Fd]).Select(fds => (SingleRegionPayload.Write(r.Region), fds)));

    private static readonly Gen<(byte[] Payload, FdSpec[] Fds)> VringFileMessage =
        Gen.Select(Index, Gen.Frequency((10, Gen.Const(false)), (1, Gen.Const(true))),
                Gen.Frequency((12, Gen.Const(0UL)), (1, Gen.OneOfConst(0x200UL, 1UL << 32))), SignalKind,
                (index, noFd, reserved, kind) => (U64((index & 0xff) | (noFd ? VringFile.NoFdFlag : 0) | reserved), noFd ? [] : new[] { new FdSpec(kind) }))
            .SelectMany(m => Descriptors(m.Item2).Select(fds => (m.Item1, fds)));

    private static readonly Gen<byte[]> VringAddr = Gen.Frequency(
        (5, Gen.Select(Gen.Int[0, Queues - 1], Gen.Frequency((10, Gen.Const(0u)), (1, Gen.OneOfConst(1u, 2u, uint.MaxValue))), (q, flags) =>
        {
            var p = new byte[VringAddress.Size];
            new VringAddress((uint)q, flags, HostileRam.Uva(HostileRam.DescTable(q)), HostileRam.Uva(HostileRam.Used(q)),
                HostileRam.Uva(HostileRam.Avail(q)), 0).Write(p);
            return p;
        })),
        (3, Gen.Select(Index, UserAddress, UserAddress, UserAddress, (i, d, u, a) =>
        {
            var p = new byte[VringAddress.Size];
            new VringAddress(i, 0, d, u, a, 0).Write(p);
            return p;
        })));

    private static readonly Gen<byte[]> Config = Gen.Select(Gen.UInt[0, 30], Gen.UInt[0, 30], Gen.Frequency((8, Gen.Const(0)), (1, Gen.Int[-4, 4])),
        Gen.Frequency((8, Gen.UInt[0, 1]), (1, Gen.UInt)), (offset, size, skew, flags) =>
        {
            var p = new byte[ConfigHeader.Length + Math.Max(0, (int)size + skew)];
            new ConfigHeader(offset, size, flags).Write(p);
            return p;
        });

    private static readonly Gen<byte[]> RarpMac = Gen.OneOf(
        Gen.Int[0, GroupUnderAttack.Vfs].Select(vf => GroupUnderAttack.MacOf(vf)),
        Gen.Const(Devices.Switch.Mac.Broadcast),
        Gen.ULong[0, 0xffff_ffff_ffff].Select(v => new Devices.Switch.Mac(v))).Select(MacPayload);

    private static byte[] MacPayload(Devices.Switch.Mac mac)
    {
        var p = new byte[8];
        mac.Write(p);
        return p;
    }

    /// <summary>A payload (and descriptors) shaped for <paramref name="request"/>, with hostile values.</summary>
    public static Gen<(byte[] Payload, FdSpec[] Fds)> PayloadFor(FrontendRequest request) => request switch
    {
        FrontendRequest.SetFeatures => NoFds(Features.Select(U64)),
        FrontendRequest.SetProtocolFeatures => NoFds(ProtocolFeatureBits.Select(U64)),
        FrontendRequest.SetMemTable => MemTable,
        FrontendRequest.AddMemReg or FrontendRequest.RemMemReg => SingleRegion,
        FrontendRequest.SetVringNum => NoFds(Gen.Select(Index, QueueSize, State)),
        FrontendRequest.SetVringBase => NoFds(Gen.Select(Index, Gen.Frequency((4, Gen.UInt[0, 0xffff]), (1, NearPowerOfTwo), (1, Gen.UInt)), State)),
        FrontendRequest.SetVringEnable => NoFds(Gen.Select(Index, Gen.Frequency((8, Gen.UInt[0, 1]), (1, Gen.UInt)), State)),
        FrontendRequest.GetVringBase => NoFds(Gen.Select(Index, Gen.UInt[0, 1], State)),
        FrontendRequest.SetVringAddr => NoFds(VringAddr),
        FrontendRequest.SetVringKick or FrontendRequest.SetVringCall or FrontendRequest.SetVringErr => VringFileMessage,
        FrontendRequest.SendRarp => NoFds(RarpMac),
        FrontendRequest.NetSetMtu => NoFds(Gen.Frequency((3, Gen.OneOfConst(0UL, 67UL, 68UL, 1500UL, 9000UL, 65535UL, 65536UL, ulong.MaxValue)),
            (1, NearPowerOfTwo.Select(x => (ulong)x))).Select(U64)),
        FrontendRequest.GetConfig or FrontendRequest.SetConfig => NoFds(Config),
        FrontendRequest.SetStatus => NoFds(Gen.Frequency((8, Gen.ULong[0, 0xff]), (1, Gen.ULong)).Select(U64)),
        FrontendRequest.SetLogBase => Gen.Select(Gen.ULong[0, 1 << 20], Gen.ULong[0, 1 << 20], (size, offset) =>
        {
            var p = new byte[16];
            BinaryPrimitives.WriteUInt64LittleEndian(p, size);
            BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(8), offset);
            return (p, new[] { new FdSpec(FdKind.FreshMemFd, 1 << 16) });
        }),
        FrontendRequest.SetLogFd or FrontendRequest.SetBackendReqFd or FrontendRequest.GpuSetSocket or FrontendRequest.SetInflightFd
            or FrontendRequest.SetDeviceStateFd =>
            Gen.Select(Gen.Byte.Array[0, 64], AnyFd, (p, fd) => (p, new[] { fd })),
        FrontendRequest.GetFeatures or FrontendRequest.GetProtocolFeatures or FrontendRequest.GetQueueNum or FrontendRequest.SetOwner
            or FrontendRequest.ResetOwner or FrontendRequest.ResetDevice or FrontendRequest.GetMaxMemSlots or FrontendRequest.GetStatus =>
            Gen.Const((Array.Empty<byte>(), Array.Empty<FdSpec>())),
        _ => NoFds(Gen.Frequency((3, Gen.Byte.Array[0, 64]), (1, Gen.OneOfConst(8, 16, 40, 72, 256).SelectMany(n => Gen.Byte.Array[n])))),
    };

    private static readonly FrontendRequest[] Requests = Enum.GetValues<FrontendRequest>();

    private static readonly Gen<uint> Flags = Gen.Frequency(
        (10, Gen.Const(NeedReply)),
        (8, Gen.Const(V)),
        (1, Gen.OneOfConst(0u, 2u, 3u, V | MessageHeader.ReplyFlag, V | 0x10u, uint.MaxValue)));

    public static readonly Gen<Ending> Endings = Gen.Frequency(
        (24, Gen.Const(Ending.Sync)),
        (6, Gen.Const(Ending.Pipelined)),
        (1, Gen.Const(Ending.CutInHeader)),
        (1, Gen.Const(Ending.CutAfterHeader)),
        (1, Gen.Const(Ending.CutInPayload)),
        (1, Gen.Const(Ending.CutAfterMessage)),
        (1, Gen.Const(Ending.SizeLies)));

    /// <summary>Sometimes the payload is a little too short or too long for its request.</summary>
    private static Gen<byte[]> Mangle(byte[] payload) => Gen.Frequency(
        (12, Gen.Const(payload)),
        (1, Gen.Int[1, 16].Select(d => payload[..Math.Max(0, payload.Length - d)])),
        (1, Gen.Int[1, 16].Select(d => payload.Concat(new byte[d]).ToArray())));

    private static readonly Gen<uint> RequestCode = Gen.Frequency(
        (20, Gen.OneOfConst(Requests).Select(r => (uint)r)),
        (1, Gen.OneOfConst(45u, 46u, 99u, 0xffffu, uint.MaxValue)));

    public static readonly Gen<HostileMessage> Message =
        RequestCode.SelectMany(code => PayloadFor((FrontendRequest)code).SelectMany(pf =>
            Gen.Select(Flags, Mangle(pf.Payload), Endings, (flags, payload, ending) => new HostileMessage(code, flags, payload, pf.Fds, ending))));

    private static readonly Gen<(ulong, uint, ushort, ushort)> Descriptor = Gen.Select(
        BufferAddress,
        Gen.Frequency((6, Gen.UInt[0, 2048]), (2, NearPowerOfTwo), (1, Gen.UInt)),
        Gen.Frequency((6, Gen.OneOfConst((ushort)0, (ushort)1, (ushort)2, (ushort)3)), (1, Gen.UShort[0, 7]), (1, Gen.UShort)),
        Gen.Frequency((6, Gen.UShort[0, 15]), (1, Gen.UShort[0, 1024]), (1, Gen.UShort)),
        (a, l, f, n) => (a, l, f, n));

    public static readonly Gen<RingScribble> Scribble = Gen.Select(
        Gen.Int[0, Queues - 1],
        Descriptor.Array[1, 16],
        Gen.Frequency((6, Gen.UShort[0, 15]), (1, Gen.UShort)).Array[1, 16],
        Gen.Frequency((6, Gen.UShort[0, 16]), (1, Gen.UShort)),
        (q, d, h, idx) => new RingScribble(q, d, h, idx));

    /// <summary>Mostly its own MAC as source (0 is the owner's); sometimes another member's.</summary>
    public static readonly Gen<Transmit> Frames = Gen.Select(
        Gen.Int[1, 8],
        Gen.Frequency((4, Gen.Const(GroupUnderAttack.HostileVf)), (1, Gen.Int[0, GroupUnderAttack.Vfs])),
        Gen.Int[-1, GroupUnderAttack.Vfs],
        (n, src, dst) => new Transmit(n, src, dst));

    public static readonly Gen<HostileStep> Step = Gen.Frequency(
        (12, Message.Select(m => (HostileStep)m)),
        (2, Scribble.Select(s => (HostileStep)s)),
        (1, Frames.Select(t => (HostileStep)t)));

    private static readonly FrontendRequest[] Unimplemented =
        Requests.Where(r => r != FrontendRequest.None && !MessageRules.TryGet(r, out _)).ToArray();

    private static readonly FrontendRequest[] WithoutReplyBody =
        Requests.Where(r => MessageRules.TryGet(r, out var rule) && !rule.HasReplyBody).ToArray();

    /// <summary>
    /// A message the back end must refuse without closing the connection and without a reply: an
    /// unknown or unimplemented request, or a known one without a reply body whose payload has the
    /// wrong size. Version 1, no NEED_REPLY, no descriptors, so thousands can be streamed at once.
    /// </summary>
    public static readonly Gen<byte[]> Refused = Gen.Frequency(
        (1, Gen.Select(Gen.OneOfConst(45u, 46u, 99u, 0xffffu, uint.MaxValue), Gen.Byte.Array[0, 48],
            (code, payload) => RawFrontEnd.Encode(code, V, payload))),
        (1, Gen.Select(Gen.OneOfConst(Unimplemented), Gen.Byte.Array[0, 48],
            (code, payload) => RawFrontEnd.Encode((uint)code, V, payload))),
        (2, Gen.Select(Gen.OneOfConst(WithoutReplyBody), Gen.Int[1, 16], Gen.Bool, (request, delta, longer) =>
        {
            MessageRules.TryGet(request, out var rule);
            int size = longer || rule.MinSize < delta ? rule.MaxSize + delta : rule.MinSize - delta;
            return RawFrontEnd.Encode((uint)request, V, new byte[size]);
        })));

    /// <summary>
    /// A well-formed <paramref name="request"/> for a device brought up by <see cref="HostileExecutor"/>
    /// (queue 0, regions A and B, the descriptors the request takes), or for one it does not implement,
    /// a plausible payload and descriptor.
    /// </summary>
    public static (byte[] Payload, FdSpec[] Fds) WellFormed(FrontendRequest request)
    {
        FdSpec[] none = [];
        var addr = new byte[VringAddress.Size];
        new VringAddress(0, 0, HostileRam.Uva(HostileRam.DescTable(0)), HostileRam.Uva(HostileRam.Used(0)),
            HostileRam.Uva(HostileRam.Avail(0)), 0).Write(addr);
        var config = new byte[ConfigHeader.Length + 6];
        new ConfigHeader(0, 6, 0).Write(config);
        var extra = new MemoryRegionDescription(4 << 20, 1 << 16, 0x7d00_0000_0000, 0);
        return request switch
        {
            FrontendRequest.SetFeatures => (U64(KnownFeatures), none),
            FrontendRequest.SetProtocolFeatures => (U64((ulong)(ProtocolFeatures.Mq | ProtocolFeatures.ReplyAck | ProtocolFeatures.Config |
                ProtocolFeatures.ResetDevice | ProtocolFeatures.ConfigureMemSlots | ProtocolFeatures.Status)), none),
            FrontendRequest.SetMemTable => (MemoryTablePayload.Write([HostileRam.A, HostileRam.B]), [new(FdKind.RamA), new(FdKind.RamB)]),
            FrontendRequest.AddMemReg => (SingleRegionPayload.Write(extra), [new(FdKind.FreshMemFd, 1 << 16)]),
            FrontendRequest.RemMemReg => (SingleRegionPayload.Write(HostileRam.B), none),
            FrontendRequest.SetVringNum => (State(0, 256), none),
            FrontendRequest.SetVringBase or FrontendRequest.GetVringBase => (State(0, 0), none),
            FrontendRequest.SetVringEnable => (State(0, 1), none),
            FrontendRequest.SetVringAddr => (addr, none),
            FrontendRequest.SetVringKick or FrontendRequest.SetVringCall or FrontendRequest.SetVringErr => (U64(0), [new(FdKind.EventFd)]),
            FrontendRequest.SendRarp => (MacPayload(GroupUnderAttack.MacOf(GroupUnderAttack.HostileVf)), none),
            FrontendRequest.NetSetMtu => (U64(1500), none),
            FrontendRequest.GetConfig or FrontendRequest.SetConfig => (config, none),
            FrontendRequest.SetStatus => (U64(0x0f), none),
            FrontendRequest.SetLogBase => (new byte[16], [new(FdKind.FreshMemFd, 1 << 16)]),
            FrontendRequest.SetLogFd => (new byte[8], [new(FdKind.EventFd)]),
            FrontendRequest.SetBackendReqFd or FrontendRequest.GpuSetSocket => ([], [new(FdKind.Socket)]),
            FrontendRequest.SetInflightFd => (new byte[24], [new(FdKind.FreshMemFd, 1 << 16)]),
            FrontendRequest.SetDeviceStateFd => (new byte[8], [new(FdKind.PipeReadEnd)]),
            FrontendRequest.GetFeatures or FrontendRequest.GetProtocolFeatures or FrontendRequest.GetQueueNum or FrontendRequest.SetOwner
                or FrontendRequest.ResetOwner or FrontendRequest.ResetDevice or FrontendRequest.GetMaxMemSlots or FrontendRequest.GetStatus
                or FrontendRequest.None => ([], none),
            _ => (new byte[8], none),
        };
    }

    public static readonly Gen<HostileSequence> Sequence = Gen.Select(
        Gen.Frequency((3, Gen.Const(true)), (1, Gen.Const(false))),
        Step.Array[1, 24],
        (bringUp, steps) => new HostileSequence(bringUp, steps));
}
