using System.Buffers.Binary;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// A packed ring in a memfd-backed guest memory, with a <see cref="PackedQueue"/> on it and the
/// driver's side written by hand: for unit tests of the device side, honest and hostile.
/// </summary>
public sealed class PackedRingRig : IDisposable
{
    public const ulong Desc = 0x1_0000, DriverArea = 0x0_F000, DeviceArea = 0x0_F100, Buffers = 0x10_0000;
    private readonly GuestMemoryTable _table = new();

    public PackedRingRig(int size, ulong memorySize = 0x40_0000, bool eventIdx = false, bool indirect = true)
    {
        Size = size;
        _table.Replace(new[] { (0UL, memorySize, 0x10_0000_0000UL, 0UL) }, new[] { MemFd.Create("packed", (long)memorySize) });
        Memory = _table.Current;
        Queue = new PackedQueue(size) { EventIdx = eventIdx, IndirectAllowed = indirect };
        Assert.Null(Queue.Configure(Memory, new RingPlacement(size, Desc, DriverArea, DeviceArea)));
        Assert.Null(Queue.SetVringBase(PackedRing.WrapBit));
    }

    public int Size { get; }
    public GuestMemory Memory { get; }
    public PackedQueue Queue { get; }
    /// <summary>The driver's next slot and its lap.</summary>
    public ushort Slot { get; private set; }
    public bool Wrap { get; private set; } = true;

    public void Dispose() => _table.Dispose();

    public ushort ReadU16(ulong gpa)
    {
        Span<byte> b = stackalloc byte[2];
        Assert.True(Memory.Read(gpa, b));
        return BinaryPrimitives.ReadUInt16LittleEndian(b);
    }

    public uint ReadU32(ulong gpa)
    {
        Span<byte> b = stackalloc byte[4];
        Assert.True(Memory.Read(gpa, b));
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    public void WriteU16(ulong gpa, ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        Assert.True(Memory.Write(gpa, b));
    }

    /// <summary>Writes a descriptor verbatim at <paramref name="gpa"/> (a ring slot or an indirect table entry).</summary>
    public void WriteDescriptorAt(ulong gpa, ulong address, uint length, ushort id, ushort flags)
    {
        Span<byte> d = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], id);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], flags);
        Assert.True(Memory.Write(gpa, d));
    }

    public ulong SlotAddress(int slot) => Desc + 16UL * (ulong)slot;

    /// <summary>
    /// Makes a chain available at the driver's position, as an honest driver would (flags with this
    /// lap's wrap bits, the first descriptor's written last), but with whatever values are given.
    /// <paramref name="extraFlags"/> are OR-ed into every descriptor (e.g. WRITE, INDIRECT).
    /// </summary>
    public void Offer(ushort id, ReadOnlySpan<(ulong Address, uint Length, ushort Flags)> descriptors)
    {
        int first = Slot;
        bool firstWrap = Wrap;
        ushort firstFlags = 0;
        for (int i = 0; i < descriptors.Length; i++)
        {
            var (a, l, f) = descriptors[i];
            ushort flags = (ushort)(f | (i < descriptors.Length - 1 ? PackedRing.DescNext : 0) | PackedRing.AvailableFlags(Wrap));
            if (i == 0)
                firstFlags = flags;
            WriteDescriptorAt(SlotAddress(Slot), a, l, id, i == 0 ? PackedRing.UsedFlags(!firstWrap) : flags);
            Step();
        }
        WriteU16(SlotAddress(first) + 14, firstFlags);
    }

    /// <summary>One writable (or readable) buffer of 64 bytes, per id, as a one-descriptor chain.</summary>
    public void OfferOne(ushort id, bool writable = true) =>
        Offer(id, [(Buffers + 64UL * id, 64u, writable ? PackedRing.DescWrite : (ushort)0)]);

    public void Step()
    {
        if (++Slot == Size)
        {
            Slot = 0;
            Wrap = !Wrap;
        }
    }

    /// <summary>The used descriptor at <paramref name="slot"/> if its flags say used in lap <paramref name="wrap"/>.</summary>
    public (ushort Id, uint Length)? UsedAt(int slot, bool wrap)
    {
        ushort flags = ReadU16(SlotAddress(slot) + 14);
        if (!PackedRing.IsUsed(flags, wrap))
            return null;
        return (ReadU16(SlotAddress(slot) + 12), ReadU32(SlotAddress(slot) + 8));
    }
}
