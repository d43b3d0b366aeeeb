using System.Buffers.Binary;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.FrontEnd;

/// <summary>One buffer the driver offers: guest physical address, length, and whether the device writes it.</summary>
public readonly record struct BufferSpec(ulong Address, uint Length, bool Writable);

/// <summary>
/// Driver side of a split virtqueue in <see cref="GuestRam"/>: lays out the rings, hands out
/// descriptors, publishes chains (direct or indirect), kicks, and collects used buffers. The raw
/// methods (<see cref="WriteDescriptor"/>, <see cref="PublishHead"/>, <see cref="SetAvailIndex"/>)
/// let a test build chains no honest driver would. <see cref="Packed"/> makes a packed ring instead
/// (VIRTIO_F_RING_PACKED), driven through the same chain methods.
/// </summary>
public sealed unsafe partial class DriverQueue : IDisposable
{
    private readonly GuestRam _ram;
    private readonly ushort[] _shadowNext;   // our own copy of the links, so reclaiming never trusts ring memory
    private readonly int[] _chainLength;
    private readonly ulong[] _indirectTable; // per head: an indirect table area, allocated on first use
    private readonly Stack<ushort> _free = new();
    private ushort _availIdx;
    private readonly Func<ulong, ulong, ulong> _allocate;
    private ushort _lastUsed;

    public DriverQueue(GuestRam ram, int index, int size) : this(ram, index, size, legacyLayout: false)
    {
    }

    /// <param name="legacyLayout">
    /// Place the rings the way a legacy (transitional) device expects them: one 4096-aligned area found
    /// from its page frame number (<see cref="LegacyPfn"/>), see <see cref="SplitRing.LegacyLayout"/>.
    /// </param>
    public DriverQueue(GuestRam ram, int index, int size, bool legacyLayout) : this(ram, index, size, legacyLayout, ram.Allocate)
    {
    }

    /// <summary>A queue whose rings (and indirect tables) come from <paramref name="arena"/>, e.g. a device's DMA window.</summary>
    public DriverQueue(RamArena arena, int index, int size) : this(arena.Ram, index, size, legacyLayout: false, arena.Allocate)
    {
    }

    private DriverQueue(GuestRam ram, int index, int size, bool legacyLayout, Func<ulong, ulong, ulong> allocate, bool packed = false)
    {
        if (!SplitRing.IsValidSize(size))
            throw new ArgumentOutOfRangeException(nameof(size), "queue size must be a power of two");
        _ram = ram;
        _allocate = allocate;
        Index = index;
        Size = size;
        IsPacked = packed;
        if (packed)
        {
            DescriptorTable = allocate(PackedRing.DescriptorTableSize(size), 4096);
            AvailableRing = allocate(PackedRing.EventSuppressionSize, PackedRing.EventAlignment);
            UsedRing = allocate(PackedRing.EventSuppressionSize, PackedRing.EventAlignment);
            ram.Span(DescriptorTable, (int)PackedRing.DescriptorTableSize(size)).Clear();
            ram.Span(AvailableRing, PackedRing.EventSuppressionSize).Clear();
            ram.Span(UsedRing, PackedRing.EventSuppressionSize).Clear();
        }
        else if (legacyLayout)
        {
            var (availOffset, usedOffset, total) = SplitRing.LegacyLayout(size);
            DescriptorTable = allocate(total, SplitRing.LegacyAlignment);
            AvailableRing = DescriptorTable + availOffset;
            UsedRing = DescriptorTable + usedOffset;
        }
        else
        {
            DescriptorTable = allocate(SplitRing.DescriptorTableSize(size), 4096);
            AvailableRing = allocate(SplitRing.AvailableRingSize(size), SplitRing.AvailableAlignment);
            UsedRing = allocate(SplitRing.UsedRingSize(size), 4096);
        }
        if (!packed)
        {
            ram.Span(DescriptorTable, (int)SplitRing.DescriptorTableSize(size)).Clear();
            ram.Span(AvailableRing, (int)SplitRing.AvailableRingSize(size)).Clear();
            ram.Span(UsedRing, (int)SplitRing.UsedRingSize(size)).Clear();
        }
        _shadowNext = new ushort[size];
        _chainLength = new int[size];
        _indirectTable = new ulong[size];
        for (int i = size - 1; i >= 0; i--)
            _free.Push((ushort)i);
    }

    public int Index { get; }
    public int Size { get; }
    public ulong DescriptorTable { get; }
    public ulong AvailableRing { get; }
    public ulong UsedRing { get; }
    /// <summary>The legacy Queue Address value: the descriptor table's page frame number.</summary>
    public uint LegacyPfn => (uint)(DescriptorTable >> SplitRing.LegacyAddressShift);
    public EventFd Kick { get; } = new();
    public EventFd Call { get; } = new();
    public int FreeDescriptors => _free.Count;
    /// <summary>The driver's avail index (next slot to publish).</summary>
    public ushort AvailIndex => _availIdx;
    /// <summary>Whether the driver uses EVENT_IDX (then it writes used_event after each reap).</summary>
    public bool EventIdx { get; set; }

    private Span<byte> Avail => _ram.Span(AvailableRing, (int)SplitRing.AvailableRingSize(Size));
    private Span<byte> Used => _ram.Span(UsedRing, (int)SplitRing.UsedRingSize(Size));

    /// <summary>The device's used index as it is in memory now.</summary>
    /// <remarks>Packed rings have no used index: there it counts the buffers reaped, plus one if the next is used already.</remarks>
    public ushort UsedIndex => IsPacked ? PackedUsedCount : Volatile.Read(ref *(ushort*)(_ram.Pointer(UsedRing + 2, 2)));

    /// <summary>Writes one descriptor verbatim (any values).</summary>
    public void WriteDescriptor(int index, ulong address, uint length, ushort flags, ushort next) =>
        WriteDescriptorAt(DescriptorTable + (ulong)(index * SplitRing.DescriptorSize), address, length, flags, next);

    /// <summary>Writes a descriptor at any guest address (e.g. into an indirect table).</summary>
    public void WriteDescriptorAt(ulong gpa, ulong address, uint length, ushort flags, ushort next)
    {
        var d = _ram.Span(gpa, SplitRing.DescriptorSize);
        BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    /// <summary>Puts a chain of buffers on the ring (descriptor table entries) and publishes it. Returns the head.</summary>
    public ushort AddChain(ReadOnlySpan<BufferSpec> buffers)
    {
        if (IsPacked)
            return AddPackedChain(buffers);
        if (buffers.IsEmpty || buffers.Length > _free.Count)
            throw new InvalidOperationException($"need {buffers.Length} free descriptors, have {_free.Count}");
        Span<ushort> ids = stackalloc ushort[buffers.Length];
        for (int i = 0; i < ids.Length; i++)
            ids[i] = _free.Pop();
        for (int i = 0; i < ids.Length; i++)
        {
            bool last = i == ids.Length - 1;
            ushort flags = (ushort)((buffers[i].Writable ? SplitRing.DescWrite : 0) | (last ? 0 : SplitRing.DescNext));
            ushort next = last ? (ushort)0 : ids[i + 1];
            WriteDescriptor(ids[i], buffers[i].Address, buffers[i].Length, flags, next);
            _shadowNext[ids[i]] = next;
        }
        _chainLength[ids[0]] = ids.Length;
        PublishHead(ids[0]);
        return ids[0];
    }

    /// <summary>Puts a chain on the ring through one indirect table (one ring descriptor). Returns the head.</summary>
    public ushort AddIndirectChain(ReadOnlySpan<BufferSpec> buffers)
    {
        if (IsPacked)
            return AddPackedIndirectChain(buffers);
        if (buffers.IsEmpty || buffers.Length > Size || _free.Count == 0)
            throw new InvalidOperationException("no room for an indirect chain");
        ushort head = _free.Pop();
        if (_indirectTable[head] == 0)
            _indirectTable[head] = _allocate((ulong)(Size * SplitRing.DescriptorSize), 16);
        ulong table = _indirectTable[head];
        for (int i = 0; i < buffers.Length; i++)
        {
            bool last = i == buffers.Length - 1;
            ushort flags = (ushort)((buffers[i].Writable ? SplitRing.DescWrite : 0) | (last ? 0 : SplitRing.DescNext));
            WriteDescriptorAt(table + (ulong)(i * SplitRing.DescriptorSize), buffers[i].Address, buffers[i].Length, flags, (ushort)(last ? 0 : i + 1));
        }
        WriteDescriptor(head, table, (uint)(buffers.Length * SplitRing.DescriptorSize), SplitRing.DescIndirect, 0);
        _chainLength[head] = 1;
        PublishHead(head);
        return head;
    }

    /// <summary>Publishes a head in the next avail slot and moves the avail index (release ordering).</summary>
    public void PublishHead(ushort head)
    {
        var avail = Avail;
        BinaryPrimitives.WriteUInt16LittleEndian(avail[(4 + 2 * (_availIdx & (Size - 1)))..], head);
        _availIdx++;
        Volatile.Write(ref *(ushort*)_ram.Pointer(AvailableRing + 2, 2), _availIdx);
    }

    /// <summary>Sets the avail index to any value (hostile: e.g. far ahead of what was published).</summary>
    public void SetAvailIndex(ushort value)
    {
        _availIdx = value;
        Volatile.Write(ref *(ushort*)_ram.Pointer(AvailableRing + 2, 2), value);
    }

    /// <summary>Sets or clears VIRTQ_AVAIL_F_NO_INTERRUPT.</summary>
    public void SetNoInterrupt(bool suppress) =>
        BinaryPrimitives.WriteUInt16LittleEndian(Avail, suppress ? SplitRing.AvailNoInterrupt : (ushort)0);

    /// <summary>Writes used_event (EVENT_IDX): "interrupt me when the used index passes this".</summary>
    public void SetUsedEvent(ushort value) =>
        BinaryPrimitives.WriteUInt16LittleEndian(Avail[(4 + 2 * Size)..], value);

    /// <summary>The device's NO_NOTIFY flag (without EVENT_IDX).</summary>
    public bool DeviceSuppressesKicks => IsPacked ? PackedDeviceFlags == PackedRing.EventDisable : (BinaryPrimitives.ReadUInt16LittleEndian(Used) & SplitRing.UsedNoNotify) != 0;

    /// <summary>The device's avail_event (with EVENT_IDX).</summary>
    public ushort AvailEvent => BinaryPrimitives.ReadUInt16LittleEndian(Used[(4 + SplitRing.UsedElementSize * Size)..]);

    public void Notify() => Kick.Signal();

    /// <summary>Takes the next used element, if the device has returned one, and frees its descriptors.</summary>
    public bool TryGetUsed(out ushort id, out uint length)
    {
        if (IsPacked)
            return TryGetPackedUsed(out id, out length);
        id = 0;
        length = 0;
        if (UsedIndex == _lastUsed)
            return false;
        var elem = Used[(4 + SplitRing.UsedElementSize * (_lastUsed & (Size - 1)))..];
        uint rawId = BinaryPrimitives.ReadUInt32LittleEndian(elem);
        length = BinaryPrimitives.ReadUInt32LittleEndian(elem[4..]);
        _lastUsed++;
        if (EventIdx)
            SetUsedEvent(_lastUsed);
        if (rawId >= (uint)Size || _chainLength[rawId] == 0)
            throw new FrontEndException($"device returned unknown head {rawId} on queue {Index}");
        id = (ushort)rawId;
        ushort d = id;
        for (int i = 0, n = _chainLength[id]; i < n; i++)
        {
            _free.Push(d);
            d = _shadowNext[d];
        }
        _chainLength[id] = 0;
        return true;
    }

    /// <summary>Waits (on the call descriptor) for the next used element; throws on timeout.</summary>
    public (ushort Id, uint Length) WaitUsed(int timeoutMs = 10_000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while (true)
        {
            if (TryGetUsed(out var id, out var len))
                return (id, len);
            // used_event was just written by the last reap; make it visible before the final look,
            // or the device could miss it and skip the call we are about to wait for.
            Interlocked.MemoryBarrier();
            if (TryGetUsed(out id, out len))
                return (id, len);
            long left = deadline - Environment.TickCount64;
            if (left <= 0)
                throw new TimeoutException($"queue {Index}: no used buffer within {timeoutMs} ms");
            Call.Wait((int)Math.Min(left, 50));
        }
    }

    /// <summary>Sends the ring set-up messages for this queue (NUM, BASE, ADDR, KICK, CALL, optionally ERR).</summary>
    public void Configure(VhostUserFrontEnd fe, EventFd? err = null, ushort availBase = 0)
    {
        fe.SetVringNum((uint)Index, (uint)Size);
        // A fresh packed ring starts in the lap whose wrap counters are 1 (QEMU's encoding: avail, then used).
        fe.SetVringBase((uint)Index, IsPacked ? PackedRing.WrapBit | (uint)PackedRing.WrapBit << 16 : availBase);
        fe.SetVringAddr((uint)Index, _ram.UserAddressOf(DescriptorTable), _ram.UserAddressOf(UsedRing), _ram.UserAddressOf(AvailableRing));
        if (err != null)
            fe.SetVringErr((uint)Index, err);
        fe.SetVringCall((uint)Index, Call);
        fe.SetVringKick((uint)Index, Kick);
    }

    public void Dispose()
    {
        Kick.Dispose();
        Call.Dispose();
    }
}
