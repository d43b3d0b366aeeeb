using System.Buffers.Binary;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.FrontEnd;

// The packed layout (VIRTIO 1.x 2.8) of the driver: descriptors written in ring order with the
// buffer id in each, the first descriptor's flags last; used descriptors read back in ring order.
public sealed unsafe partial class DriverQueue
{
    private ushort _packedAvail;       // next slot to fill
    private bool _packedAvailWrap = true;
    private ushort _packedUsed;        // next slot the device writes a used descriptor to
    private bool _packedUsedWrap = true;
    private int _packedFreeSlots;
    private ushort _packedReaped;

    /// <summary>A packed ring (VIRTIO_F_RING_PACKED) in <paramref name="ram"/>: descriptor ring plus the two event areas.</summary>
    public static DriverQueue Packed(GuestRam ram, int index, int size)
    {
        var q = new DriverQueue(ram, index, size, legacyLayout: false, ram.Allocate, packed: true);
        q._packedFreeSlots = size;
        return q;
    }

    /// <summary>True for a packed ring: <see cref="AvailableRing"/> and <see cref="UsedRing"/> are then the driver and device event areas.</summary>
    public bool IsPacked { get; }

    /// <summary>The slot the next chain starts at, and the lap it is made available in.</summary>
    public ushort PackedAvailSlot => _packedAvail;
    public bool PackedAvailWrap => _packedAvailWrap;

    private ushort PackedUsedCount =>
        (ushort)(_packedReaped + (PackedRing.IsUsed(ReadPackedFlags(_packedUsed), _packedUsedWrap) ? 1 : 0));

    /// <summary>The device's event suppression flags (device area).</summary>
    public ushort PackedDeviceFlags => Volatile.Read(ref *(ushort*)_ram.Pointer(UsedRing + PackedRing.EventFlagsOffset, 2));
    /// <summary>The device's event suppression off_wrap (device area, meaningful with flags DESC).</summary>
    public ushort PackedDeviceOffWrap => Volatile.Read(ref *(ushort*)_ram.Pointer(UsedRing, 2));

    private ushort ReadPackedFlags(int slot) =>
        Volatile.Read(ref *(ushort*)_ram.Pointer(DescriptorTable + (ulong)(slot * PackedRing.DescriptorSize) + PackedRing.FlagsOffset, 2));

    /// <summary>Writes one packed descriptor verbatim (any values); <paramref name="flags"/> last, with release.</summary>
    public void WritePackedDescriptor(int slot, ulong address, uint length, ushort id, ushort flags)
    {
        var d = _ram.Span(DescriptorTable + (ulong)(slot * PackedRing.DescriptorSize), PackedRing.DescriptorSize);
        BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[PackedRing.IdOffset..], id);
        Volatile.Write(ref *(ushort*)_ram.Pointer(DescriptorTable + (ulong)(slot * PackedRing.DescriptorSize) + PackedRing.FlagsOffset, 2), flags);
    }

    /// <summary>Writes the driver area: flags ENABLE/DISABLE/DESC, and off_wrap for DESC.</summary>
    public void SetPackedDriverEvent(ushort flags, ushort offWrap = 0)
    {
        Volatile.Write(ref *(ushort*)_ram.Pointer(AvailableRing, 2), offWrap);
        Volatile.Write(ref *(ushort*)_ram.Pointer(AvailableRing + PackedRing.EventFlagsOffset, 2), flags);
    }

    private ushort AddPackedChain(ReadOnlySpan<BufferSpec> buffers)
    {
        if (buffers.IsEmpty || buffers.Length > _packedFreeSlots || _free.Count == 0)
            throw new InvalidOperationException($"need {buffers.Length} free slots, have {_packedFreeSlots}");
        ushort id = _free.Pop();
        ushort first = _packedAvail;
        bool firstWrap = _packedAvailWrap;
        ushort firstFlags = 0;
        for (int i = 0; i < buffers.Length; i++)
        {
            bool last = i == buffers.Length - 1;
            ushort flags = (ushort)((buffers[i].Writable ? PackedRing.DescWrite : 0) | (last ? 0 : PackedRing.DescNext) |
                                    PackedRing.AvailableFlags(_packedAvailWrap));
            if (i == 0)
                firstFlags = flags;
            else
                WritePackedDescriptor(_packedAvail, buffers[i].Address, buffers[i].Length, id, flags);
            if (i == 0)
                WriteFirstPending(_packedAvail, buffers[0].Address, buffers[0].Length, id, firstWrap);
            StepAvail();
        }
        _chainLength[id] = buffers.Length;
        _packedFreeSlots -= buffers.Length;
        // The first descriptor's flags last: the device sees the whole chain or none of it.
        WritePackedDescriptor(first, buffers[0].Address, buffers[0].Length, id, firstFlags);
        return id;
    }

    /// <summary>The first descriptor without its AVAIL/USED bits flipped yet (still "used" in the previous lap's terms).</summary>
    private void WriteFirstPending(int slot, ulong address, uint length, ushort id, bool wrap) =>
        WritePackedDescriptor(slot, address, length, id, PackedRing.UsedFlags(!wrap));

    private ushort AddPackedIndirectChain(ReadOnlySpan<BufferSpec> buffers)
    {
        if (buffers.IsEmpty || buffers.Length > Size || _packedFreeSlots == 0 || _free.Count == 0)
            throw new InvalidOperationException("no room for an indirect chain");
        ushort id = _free.Pop();
        if (_indirectTable[id] == 0)
            _indirectTable[id] = _allocate((ulong)(Size * PackedRing.DescriptorSize), 16);
        ulong table = _indirectTable[id];
        for (int i = 0; i < buffers.Length; i++)
        {
            var e = _ram.Span(table + (ulong)(i * PackedRing.DescriptorSize), PackedRing.DescriptorSize);
            BinaryPrimitives.WriteUInt64LittleEndian(e, buffers[i].Address);
            BinaryPrimitives.WriteUInt32LittleEndian(e[8..], buffers[i].Length);
            BinaryPrimitives.WriteUInt16LittleEndian(e[PackedRing.IdOffset..], 0);
            BinaryPrimitives.WriteUInt16LittleEndian(e[PackedRing.FlagsOffset..], buffers[i].Writable ? PackedRing.DescWrite : (ushort)0);
        }
        WritePackedDescriptor(_packedAvail, table, (uint)(buffers.Length * PackedRing.DescriptorSize), id,
            (ushort)(PackedRing.DescIndirect | PackedRing.AvailableFlags(_packedAvailWrap)));
        StepAvail();
        _chainLength[id] = 1;
        _packedFreeSlots--;
        return id;
    }

    /// <summary>Moves the driver's avail position by <paramref name="slots"/> without writing (after raw descriptor writes).</summary>
    public void AdvancePackedAvail(int slots)
    {
        for (int i = 0; i < slots; i++)
            StepAvail();
    }

    private void StepAvail()
    {
        if (++_packedAvail == Size)
        {
            _packedAvail = 0;
            _packedAvailWrap = !_packedAvailWrap;
        }
    }

    private bool TryGetPackedUsed(out ushort id, out uint length)
    {
        id = 0;
        length = 0;
        if (!PackedRing.IsUsed(ReadPackedFlags(_packedUsed), _packedUsedWrap))
            return false;
        var d = _ram.Span(DescriptorTable + (ulong)(_packedUsed * PackedRing.DescriptorSize), PackedRing.DescriptorSize);
        length = BinaryPrimitives.ReadUInt32LittleEndian(d[8..]);
        ushort rawId = BinaryPrimitives.ReadUInt16LittleEndian(d[PackedRing.IdOffset..]);
        if (rawId >= Size || _chainLength[rawId] == 0)
            throw new FrontEndException($"device returned unknown buffer id {rawId} on queue {Index}");
        id = rawId;
        int slots = _chainLength[id];
        _chainLength[id] = 0;
        _free.Push(id);
        _packedFreeSlots += slots;
        _packedReaped++;
        int next = _packedUsed + slots;
        if (next >= Size)
        {
            next -= Size;
            _packedUsedWrap = !_packedUsedWrap;
        }
        _packedUsed = (ushort)next;
        if (EventIdx)
            SetPackedDriverEvent(PackedRing.EventDesc, PackedRing.Pack(_packedUsed, _packedUsedWrap));
        return true;
    }
}
