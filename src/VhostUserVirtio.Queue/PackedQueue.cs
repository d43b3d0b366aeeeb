using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Queue;

/// <summary>
/// Device side of one packed virtqueue (VIRTIO_F_RING_PACKED, VIRTIO 1.x 2.8) in guest memory. Pops
/// validated chains into the same <see cref="DescriptorChain"/> the split ring produces, writes used
/// descriptors back in bursts, and decides about notifications through the two event suppression
/// structures.
///
/// Everything read from the guest is distrusted, as in <see cref="SplitQueue"/>: each descriptor is
/// copied once, then checked (buffers inside mapped memory, lengths summed without overflow, a chain
/// no longer than the ring, indirect tables well formed, not nested and inside memory, buffer ids
/// below the ring size and never in flight twice, never more descriptors in flight than the ring
/// holds). Any violation marks the queue broken: from then on it pops nothing and writes nothing.
///
/// Not thread-safe: one thread (the worker that owns the queue) uses it at a time.
/// </summary>
public sealed unsafe partial class PackedQueue : Virtqueue
{
    private GuestMemory _memory = GuestMemory.Empty;
    private byte* _desc;
    private byte* _driverEvent;
    private byte* _deviceEvent;
    private ushort _size;
    private readonly DescriptorChain _chain;
    private DirtyLog? _log;
    private DirtyLog? _ringLog; // device writes to the ring and the device area, while logging them

    // Where the next chain starts, and the lap (wrap counter) the driver marks it available in.
    private ushort _availIdx;
    private bool _availWrap = true;
    // Where the next used descriptor goes, and its lap.
    private ushort _usedIdx;
    private bool _usedWrap = true;

    // Per buffer id: ring slots its chain took while in flight (0 = not in flight), and their sum.
    private ushort[] _inFlight = [];
    private int _inFlightSlots;
    // The chains popped, in order (start slot and lap, id), so the last ones can be given back.
    private ushort[] _popStart = [];
    private ushort[] _popId = [];
    private uint _popped;
    // Used entries pushed but not yet written to the ring: written as one burst by PublishUsed.
    private ushort[] _shadowId = [];
    private uint[] _shadowLength = [];
    private ushort[] _shadowSlots = [];
    private int _shadowCount;
    // The used position at the last notification decision (EVENT_IDX).
    private ushort _signalledUsed;
    private bool _signalledUsedValid;

    /// <param name="maxSize">The largest size the device allows; room per slot is taken when a ring of a given size is configured.</param>
    public PackedQueue(int maxSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSize, 1);
        _chain = new DescriptorChain(1);
    }

    public override bool IsPacked => true;
    public override ushort Size => _size;
    public override GuestMemory Memory => _memory;
    public override bool IsReady => _desc != null && Fault == null;
    public override DirtyLog? Log => _log;
    public override ulong? UsedLogAddress => _ringLog != null ? UsedRing : null;

    /// <summary>The next avail slot (the wrap counter is <see cref="AvailWrapCounter"/>).</summary>
    public override ushort NextAvail
    {
        get => _availIdx;
        set => _availIdx = value < _size ? value : throw new ArgumentOutOfRangeException(nameof(value), $"slot {value} is not below the queue size {_size}");
    }

    public bool AvailWrapCounter => _availWrap;
    public bool UsedWrapCounter => _usedWrap;
    /// <summary>Ring slots taken by chains popped and not yet returned.</summary>
    public int InFlightSlots => _inFlightSlots;

    public override uint VringBase =>
        PackedRing.Pack(_availIdx, _availWrap) | (uint)PackedRing.Pack(_usedIdx, _usedWrap) << 16;

    /// <summary>
    /// Resumes at a vhost-user ring base: bits 0-14 the next avail slot, bit 15 its wrap counter (the
    /// upper half, QEMU's used position, is not needed: as DPDK does, the used side resumes where the
    /// avail side is, since a stopped ring has nothing in flight). Call after <see cref="Configure"/>.
    /// </summary>
    public RingError? SetVringBase(uint value)
    {
        ushort slot = (ushort)(value & (PackedRing.WrapBit - 1));
        if (slot >= _size)
            return new(RingErrorKind.InvalidSize, $"packed ring base slot {slot} is not below the queue size {_size}");
        _availIdx = _usedIdx = slot;
        _availWrap = _usedWrap = (value & PackedRing.WrapBit) != 0;
        NextUsed = slot;
        _signalledUsedValid = false;
        return null;
    }

    /// <summary>
    /// Turns dirty logging on or off. The device's writes to the ring (used descriptors) and to the
    /// device area are marked at their own guest addresses when <paramref name="usedLogAddress"/> is
    /// given (its value does not matter: the packed ring has no separate used ring to relocate).
    /// </summary>
    public override void SetDirtyLog(DirtyLog? log, ulong? usedLogAddress)
    {
        _log = log;
        _ringLog = log != null && usedLogAddress != null ? log : null;
    }

    public override bool WriteGuest(ulong gpa, ReadOnlySpan<byte> source)
    {
        if (!_memory.Write(gpa, source))
            return false;
        _log?.Mark(gpa, (ulong)source.Length);
        return true;
    }

    public override RingError? Configure(GuestMemory memory, RingPlacement placement)
    {
        _desc = _driverEvent = _deviceEvent = null;
        if (PackedPlacement.Check(placement, memory) is { } error)
            return error;
        int size = placement.Size;
        _size = (ushort)size;
        DescriptorTable = placement.Descriptors;
        AvailableRing = placement.Available;
        UsedRing = placement.Used;
        _chain.EnsureCapacity(size);
        if (_inFlight.Length < size)
        {
            _inFlight = new ushort[size];
            _popStart = new ushort[size];
            _popId = new ushort[size];
            _shadowId = new ushort[size];
            _shadowLength = new uint[size];
            _shadowSlots = new ushort[size];
        }
        return Remap(memory);
    }

    public override RingError? Remap(GuestMemory memory)
    {
        _memory = memory;
        _desc = memory.GetPointer(DescriptorTable, PackedRing.DescriptorTableSize(_size));
        _driverEvent = memory.GetPointer(AvailableRing, PackedRing.EventSuppressionSize);
        _deviceEvent = memory.GetPointer(UsedRing, PackedRing.EventSuppressionSize);
        if (_desc == null || _driverEvent == null || _deviceEvent == null)
        {
            _desc = _driverEvent = _deviceEvent = null;
            return new(RingErrorKind.RingOutsideMemory,
                $"packed ring outside mapped memory (desc 0x{DescriptorTable:x}, driver area 0x{AvailableRing:x}, device area 0x{UsedRing:x}, size {_size})");
        }
        return null;
    }

    public override void Reset()
    {
        _desc = _driverEvent = _deviceEvent = null;
        SetDirtyLog(null, null);
        Fault = null;
        _availIdx = _usedIdx = 0;
        _availWrap = _usedWrap = true;
        NextUsed = 0;
        Array.Clear(_inFlight);
        _inFlightSlots = 0;
        _popped = 0;
        _shadowCount = 0;
        _signalledUsedValid = false;
        ChainsPopped = 0;
    }

    /// <summary>The flags of the descriptor at <paramref name="slot"/> (acquire: the rest of a descriptor found available is read after it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ushort ReadFlags(int slot) => Volatile.Read(ref *(ushort*)(_desc + PackedRing.DescriptorSize * slot + PackedRing.FlagsOffset));

    public override bool HasPending => IsReady && PackedRing.IsAvailable(ReadFlags(_availIdx), _availWrap);

    public override DescriptorChain? Pop()
    {
        if (!IsReady || !PackedRing.IsAvailable(ReadFlags(_availIdx), _availWrap))
            return null;
        if (WalkChain(out ushort id, out int slots) is { } error)
        {
            Break(error.Kind, $"chain at slot {_availIdx}: {error.Detail}");
            return null;
        }
        if (id >= _size)
        {
            Break(RingErrorKind.BufferIdOutOfRange, $"chain at slot {_availIdx} names buffer id {id}, not below the queue size {_size}");
            return null;
        }
        if (_inFlight[id] != 0)
        {
            Break(RingErrorKind.BufferIdInFlight, $"chain at slot {_availIdx} names buffer id {id}, which is already in flight");
            return null;
        }
        if (_inFlightSlots + slots > _size)
        {
            Break(RingErrorKind.RingOverrun,
                $"chain at slot {_availIdx} takes {slots} descriptor(s) while {_inFlightSlots} of {_size} are in flight (the driver reused slots not yet given back)");
            return null;
        }
        int record = (int)(_popped++ % _size);
        _popStart[record] = PackedRing.Pack(_availIdx, _availWrap);
        _popId[record] = id;
        _inFlight[id] = (ushort)slots;
        _inFlightSlots += slots;
        Advance(ref _availIdx, ref _availWrap, slots);
        _chain.SetHead(id);
        ChainsPopped++;
        return _chain;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Advance(ref ushort slot, ref bool wrap, int count)
    {
        int next = slot + count;
        if (next >= _size)
        {
            next -= _size;
            wrap = !wrap;
        }
        slot = (ushort)next;
    }

    /// <summary>
    /// Reads the chain starting at the avail slot into <see cref="_chain"/>: its buffer id (the last
    /// descriptor's) and the ring slots it takes. The position is not moved.
    /// </summary>
    private RingError? WalkChain(out ushort id, out int slots)
    {
        var chain = _chain;
        chain.Begin(0, _memory, _log);
        id = 0;
        slots = 0;
        int slot = _availIdx;
        Span<byte> copy = stackalloc byte[PackedRing.DescriptorSize];
        while (true)
        {
            if (slots == _size)
                return new(RingErrorKind.ChainTooLong, "chain longer than the queue size");
            // One read of the descriptor from shared memory; everything below uses the copy.
            new ReadOnlySpan<byte>(_desc + PackedRing.DescriptorSize * slot, PackedRing.DescriptorSize).CopyTo(copy);
            slots++;
            if (++slot == _size)
                slot = 0;
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(copy);
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(copy[8..]);
            id = BinaryPrimitives.ReadUInt16LittleEndian(copy[PackedRing.IdOffset..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(copy[PackedRing.FlagsOffset..]);

            if ((flags & PackedRing.DescIndirect) != 0)
                return WalkIndirect(addr, len, flags);
            // Add checks the buffer lies in guest memory (and keeps where, for the copy).
            if (chain.Add(addr, len, (flags & PackedRing.DescWrite) != 0) is { } error)
                return error;
            if ((flags & PackedRing.DescNext) == 0)
                return null;
        }
    }

    /// <summary>An indirect descriptor (the chain's last): its table's entries are used in order, none may be indirect again.</summary>
    private RingError? WalkIndirect(ulong addr, uint len, ushort flags)
    {
        if (!IndirectAllowed)
            return new(RingErrorKind.IndirectNotNegotiated, "indirect descriptor without VIRTIO_F_INDIRECT_DESC");
        if ((flags & PackedRing.DescNext) != 0)
            return new(RingErrorKind.IndirectWithNext, "indirect descriptor with NEXT set");
        if (len == 0 || len % PackedRing.DescriptorSize != 0)
            return new(RingErrorKind.IndirectTableLength, $"indirect table length {len} is not a non-zero multiple of {PackedRing.DescriptorSize}");
        uint entries = len / PackedRing.DescriptorSize;
        if (entries > _size)
            return new(RingErrorKind.IndirectTableLength, $"indirect table of {entries} entries exceeds the queue size {_size}");
        byte* table = _memory.GetPointer(addr, len);
        if (table == null)
            return new(RingErrorKind.IndirectTableOutsideMemory, $"indirect table at 0x{addr:x} (+{len}) is not inside one mapped region");
        var chain = _chain;
        Span<byte> copy = stackalloc byte[PackedRing.DescriptorSize];
        for (uint i = 0; i < entries; i++)
        {
            new ReadOnlySpan<byte>(table + PackedRing.DescriptorSize * i, PackedRing.DescriptorSize).CopyTo(copy);
            ulong a = BinaryPrimitives.ReadUInt64LittleEndian(copy);
            uint l = BinaryPrimitives.ReadUInt32LittleEndian(copy[8..]);
            ushort f = BinaryPrimitives.ReadUInt16LittleEndian(copy[PackedRing.FlagsOffset..]);
            if ((f & PackedRing.DescIndirect) != 0)
                return new(RingErrorKind.NestedIndirect, "indirect descriptor inside an indirect table");
            if (chain.Add(a, l, (f & PackedRing.DescWrite) != 0) is { } error)
                return error;
        }
        return null;
    }

    public override void Rewind(int count)
    {
        if (count <= 0)
            return;
        if ((uint)count > _popped || count > _size)
            throw new InvalidOperationException($"cannot give back {count} chains, only {Math.Min(_popped, _size)} were popped");
        for (int k = 0; k < count; k++)
        {
            ushort id = _popId[--_popped % _size];
            _inFlightSlots -= _inFlight[id];
            _inFlight[id] = 0;
        }
        ushort start = _popStart[_popped % _size];
        _availIdx = (ushort)(start & (PackedRing.WrapBit - 1));
        _availWrap = (start & PackedRing.WrapBit) != 0;
        ChainsPopped -= (ulong)count;
    }
}
