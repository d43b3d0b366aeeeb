using System.Buffers.Binary;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// A split ring laid out in one memfd-backed guest region, written as a driver would write it: for
/// tests of the device side of the ring (bursts, inflight resume).
/// </summary>
public sealed class SplitRingImage : IDisposable
{
    public const int Size = 16;
    public const ulong MemSize = 0x10000, Desc = 0x1000, Avail = 0x2000, Used = 0x3000, Buffers = 0x4000;
    private readonly GuestMemoryTable _table = new();
    private ushort _availIdx;

    public SplitRingImage(string name)
    {
        _table.Replace(new[] { (0UL, MemSize, 0x10_0000_0000UL, 0UL) }, new[] { MemFd.Create(name, (long)MemSize) });
        Memory = _table.Current;
    }

    public GuestMemory Memory { get; }

    /// <summary>The driver's avail index (chains offered so far).</summary>
    public ushort AvailIndex => _availIdx;

    /// <summary>The device's published used index.</summary>
    public ushort UsedIndex => ReadU16(Used + 2);

    public ushort ReadU16(ulong gpa)
    {
        Span<byte> b = stackalloc byte[2];
        Assert.True(Memory.Read(gpa, b));
        return BinaryPrimitives.ReadUInt16LittleEndian(b);
    }

    public void WriteU16(ulong gpa, ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        Assert.True(Memory.Write(gpa, b));
    }

    /// <summary>Makes descriptor <paramref name="head"/> a one-buffer writable chain of 64 bytes and publishes it.</summary>
    public void Offer(ushort head)
    {
        Span<byte> d = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(d, Buffers + 64UL * head);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], 2); // WRITE
        Assert.True(Memory.Write(Desc + 16UL * head, d));
        WriteU16(Avail + 4 + 2UL * (ulong)(_availIdx % Size), head);
        WriteU16(Avail + 2, ++_availIdx);
    }

    public void Dispose() => _table.Dispose();
}
