using System.Buffers.Binary;
using CsCheck;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Tests.Support;

/// <summary>Memory-table changes a front end can make while its rings run.</summary>
public enum MemoryChange
{
    /// <summary>SET_MEM_TABLE with the regions it already has.</summary>
    SameTable,
    /// <summary>SET_MEM_TABLE with its RAM plus some extra regions (ExtrasMask).</summary>
    TableWithExtras,
    /// <summary>ADD_MEM_REG of extra region Extra (refused if present).</summary>
    AddExtra,
    /// <summary>REM_MEM_REG of extra region Extra (refused if absent).</summary>
    RemoveExtra,
    /// <summary>REM_MEM_REG of the RAM the rings live in.</summary>
    RemoveRam,
    /// <summary>ADD_MEM_REG of that RAM again.</summary>
    AddRamBack,
    /// <summary>SET_MEM_TABLE of extras only: the rings' memory is gone.</summary>
    TableWithoutRam,
    /// <summary>SET_MEM_TABLE with the RAM at another guest address (same front-end address).</summary>
    RamAtAnotherAddress,
    /// <summary>SET_MEM_TABLE whose regions overlap (must be refused, the old table kept).</summary>
    OverlappingTable,
    /// <summary>REM_MEM_REG of a region that never existed.</summary>
    RemoveUnknown,
}

public sealed record MemoryOp(MemoryChange Change, int Extra, int ExtrasMask)
{
    public override string ToString() => Change switch
    {
        MemoryChange.AddExtra or MemoryChange.RemoveExtra => $"{Change} {Extra}",
        MemoryChange.TableWithExtras or MemoryChange.TableWithoutRam => $"{Change} 0b{Convert.ToString(ExtrasMask, 2)}",
        _ => Change.ToString(),
    };
}

/// <summary>
/// Changes the memory table of a running <see cref="FrontEndSession"/> over its own connection
/// (REPLY_ACK, so every change is answered): its RAM region and four extra memfd regions
/// ("hostile-extra", 64 KiB to 2 MiB) that it adds, removes and swaps in and out.
/// </summary>
public sealed class MemoryChurn : IDisposable
{
    public const int Extras = 4;

    public static readonly Gen<MemoryOp> Ops = Gen.Frequency(
        (4, Gen.Const(new MemoryOp(MemoryChange.SameTable, 0, 0))),
        (4, Gen.Int[1, (1 << Extras) - 1].Select(m => new MemoryOp(MemoryChange.TableWithExtras, 0, m))),
        (4, Gen.Int[0, Extras - 1].Select(e => new MemoryOp(MemoryChange.AddExtra, e, 0))),
        (4, Gen.Int[0, Extras - 1].Select(e => new MemoryOp(MemoryChange.RemoveExtra, e, 0))),
        (1, Gen.Const(new MemoryOp(MemoryChange.RemoveRam, 0, 0))),
        (2, Gen.Const(new MemoryOp(MemoryChange.AddRamBack, 0, 0))),
        (1, Gen.Int[1, (1 << Extras) - 1].Select(m => new MemoryOp(MemoryChange.TableWithoutRam, 0, m))),
        (1, Gen.Const(new MemoryOp(MemoryChange.RamAtAnotherAddress, 0, 0))),
        (1, Gen.Const(new MemoryOp(MemoryChange.OverlappingTable, 0, 0))),
        (1, Gen.Const(new MemoryOp(MemoryChange.RemoveUnknown, 0, 0))));

    private readonly FrontEndSession _session;
    private readonly FileDescriptor[] _extraFds;

    public MemoryChurn(FrontEndSession session)
    {
        _session = session;
        _extraFds = Enumerable.Range(0, Extras).Select(e => MemFd.Create($"hostile-extra-{e}", (long)Extra(e).MemorySize)).ToArray();
    }

    private RamRegion Ram => _session.Ram.Regions[0];

    private MemoryRegionDescription RamRegion => new(Ram.Gpa, Ram.Size, Ram.UserAddress, Ram.MmapOffset);

    private static readonly ulong[] ExtraSizes = [0x1_0000, 0x4_0000, 0x10_0000, 0x20_0000];

    // 4 MiB apart in both address spaces, far from the session's RAM.
    private static MemoryRegionDescription Extra(int e) =>
        new(0x4000_0000UL + ((ulong)e << 22), ExtraSizes[e], 0x7d00_0000_0000UL + ((ulong)e << 22), 0);

    /// <summary>
    /// Applies the change. Returns the ack (0 = done, non-zero = refused). Throws TimeoutException
    /// when the back end does not answer, FrontEndException when it closed the connection.
    /// </summary>
    public ulong Apply(MemoryOp op)
    {
        var extras = Enumerable.Range(0, Extras).Where(e => (op.ExtrasMask & (1 << e)) != 0).ToArray();
        return op.Change switch
        {
            MemoryChange.SameTable => Table([(RamRegion, Ram.Fd)]),
            MemoryChange.TableWithExtras => Table([(RamRegion, Ram.Fd), .. extras.Select(e => (Extra(e), _extraFds[e]))]),
            MemoryChange.TableWithoutRam => Table(extras.Select(e => (Extra(e), _extraFds[e])).ToArray()),
            MemoryChange.RamAtAnotherAddress => Table([(RamRegion with { GuestPhysAddr = Ram.Gpa + 0x1000_0000 }, Ram.Fd)]),
            MemoryChange.OverlappingTable => Table([(RamRegion, Ram.Fd), (Extra(0) with { GuestPhysAddr = Ram.Gpa + 0x1000 }, _extraFds[0])]),
            MemoryChange.AddExtra => Single(FrontendRequest.AddMemReg, Extra(op.Extra), _extraFds[op.Extra]),
            MemoryChange.RemoveExtra => Single(FrontendRequest.RemMemReg, Extra(op.Extra), null),
            MemoryChange.RemoveRam => Single(FrontendRequest.RemMemReg, RamRegion, null),
            MemoryChange.AddRamBack => Single(FrontendRequest.AddMemReg, RamRegion, Ram.Fd),
            MemoryChange.RemoveUnknown => Single(FrontendRequest.RemMemReg, Extra(0) with { GuestPhysAddr = 0x7000_0000 }, null),
            _ => throw new ArgumentOutOfRangeException(nameof(op)),
        };
    }

    private ulong Table((MemoryRegionDescription Region, FileDescriptor Fd)[] regions) =>
        Ack(_session, FrontendRequest.SetMemTable, MemoryTablePayload.Write(regions.Select(r => r.Region).ToArray()),
            regions.Select(r => r.Fd.Number).ToArray());

    private ulong Single(FrontendRequest request, MemoryRegionDescription region, FileDescriptor? fd) =>
        Ack(_session, request, SingleRegionPayload.Write(region), fd == null ? [] : [fd.Number]);

    /// <summary>Sends a request with NEED_REPLY over a session's connection and returns the ack.</summary>
    public static ulong Ack(FrontEndSession session, FrontendRequest request, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds)
    {
        session.Connection.SendRaw((uint)request, MessageHeader.Version | MessageHeader.NeedReplyFlag, payload, fds);
        var (_, body) = session.Connection.ReadReply(request);
        if (body.Length != 8)
            throw new FrontEndException($"{request} ack has {body.Length} bytes");
        return BinaryPrimitives.ReadUInt64LittleEndian(body);
    }

    public void Dispose()
    {
        foreach (var fd in _extraFds)
            fd.Dispose();
    }
}
