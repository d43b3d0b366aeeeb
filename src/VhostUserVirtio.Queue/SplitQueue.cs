using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Queue;

/// <summary>
/// Device side of one split virtqueue in guest memory. Pops validated chains, publishes used
/// elements and decides about notifications (EVENT_IDX and the NO_NOTIFY/NO_INTERRUPT flags).
///
/// Everything read from the guest is distrusted: the avail index may jump, heads and next indices
/// may point anywhere, chains may loop, indirect tables may nest or be misshapen, buffers may lie
/// outside memory. Any such violation marks the queue broken (<see cref="Fault"/>): from then on it
/// pops nothing and writes nothing, and nothing else is affected.
///
/// Not thread-safe: one thread (the worker that owns the queue) uses it at a time.
/// </summary>
public sealed unsafe partial class SplitQueue : Virtqueue
{
    private GuestMemory _memory = GuestMemory.Empty;
    private byte* _desc;
    private byte* _avail;
    private byte* _used;
    private ushort _size;
    private ushort _signalledUsed;
    private bool _signalledUsedValid;
    private readonly DescriptorChain _chain;
    // Dirty logging (live migration): buffer writes are marked in _log; used-ring writes in
    // _usedLog at _usedLogBase + their offset in the used ring. Both null while logging is off.
    private DirtyLog? _log;
    private DirtyLog? _usedLog;
    private ulong _usedLogBase;

    /// <param name="maxSize">The largest size the device allows. The chain's room for that many segments
    /// is taken when a ring of a given size is configured, not here: an idle queue (a device nobody
    /// drives yet) costs a few bytes, not 16 per possible descriptor.</param>
    public SplitQueue(int maxSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSize, 1);
        _chain = new DescriptorChain(1);
    }

    public override bool IsPacked => false;
    public override ushort Size => _size;
    /// <summary>The memory snapshot the ring currently works against.</summary>
    public override GuestMemory Memory => _memory;

    /// <summary>Index of the next available-ring entry to consume (free-running, wraps at 2^16).</summary>
    public override ushort NextAvail
    {
        get => _nextAvail;
        set => _nextAvail = _availSeen = value; // the driver's index is read again on the next pop
    }

    // The driver's avail index as last read: chains up to it are popped without touching the cache
    // line the driver writes (read again only when they are used up). The used index as last
    // published: a burst of used elements is published with one store, before the notification decision.
    private ushort _nextAvail, _availSeen, _usedPublished;

    public override bool IsReady => _desc != null && Fault == null;

    /// <summary>The dirty log buffer writes are marked in, or null while logging is off.</summary>
    public override DirtyLog? Log => _log;
    /// <summary>Where used-ring writes are logged (guest physical, the used ring's first byte), or null when they are not.</summary>
    public override ulong? UsedLogAddress => _usedLog != null ? _usedLogBase : null;

    /// <summary>
    /// Turns dirty logging on or off for this ring: buffer writes are marked in <paramref name="log"/>,
    /// and with <paramref name="usedLogAddress"/>, the device's writes to the used ring (elements,
    /// index, flags, avail_event) at that guest physical address plus their offset (vhost-user's
    /// log_guest_addr, which need not be in the memory table). Takes effect with the next write; the
    /// ring keeps its position. Null turns logging off.
    /// </summary>
    public override void SetDirtyLog(DirtyLog? log, ulong? usedLogAddress)
    {
        _log = log;
        _usedLog = log != null && usedLogAddress != null ? log : null;
        _usedLogBase = usedLogAddress ?? 0;
    }

    /// <summary>
    /// Copies bytes into guest memory (e.g. a header field patched after the chain was written),
    /// marking them in the dirty log while logging is on. False if any byte is unmapped.
    /// </summary>
    public override bool WriteGuest(ulong gpa, ReadOnlySpan<byte> source)
    {
        if (!_memory.Write(gpa, source))
            return false;
        _log?.Mark(gpa, (ulong)source.Length);
        return true;
    }

    /// <summary>Marks a used-ring write at <paramref name="offset"/> from the ring's start (after it is done).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void LogUsed(ulong offset, ulong length) => _usedLog?.Mark(_usedLogBase + offset, length);

    /// <summary>
    /// Places the rings. Checks size, alignment, and that each ring part lies inside one mapped region.
    /// On failure the queue is left unready and the reason returned.
    /// </summary>
    public override RingError? Configure(GuestMemory memory, RingPlacement placement)
    {
        _desc = _avail = _used = null;
        if (placement.Check(memory) is { } error)
            return error;
        _size = (ushort)placement.Size;
        DescriptorTable = placement.Descriptors;
        AvailableRing = placement.Available;
        UsedRing = placement.Used;
        _chain.EnsureCapacity(placement.Size);
        return Remap(memory);
    }

    /// <summary>Re-resolves the ring pointers against a new memory snapshot (after a memory table change).</summary>
    public override RingError? Remap(GuestMemory memory)
    {
        _memory = memory;
        int size = _size;
        _desc = memory.GetPointer(DescriptorTable, SplitRing.DescriptorTableSize(size));
        _avail = memory.GetPointer(AvailableRing, SplitRing.AvailableRingSize(size));
        _used = memory.GetPointer(UsedRing, SplitRing.UsedRingSize(size));
        if (_desc == null || _avail == null || _used == null)
        {
            _desc = _avail = _used = null;
            return new(RingErrorKind.RingOutsideMemory,
                $"ring outside mapped memory (desc 0x{DescriptorTable:x}, avail 0x{AvailableRing:x}, used 0x{UsedRing:x}, size {size})");
        }
        return null;
    }

    /// <summary>Reads the used index from guest memory (the split ring keeps it there, not in SET_VRING_BASE).</summary>
    public void SyncUsedIndex()
    {
        if (_used != null)
            NextUsed = Volatile.Read(ref *(ushort*)(_used + 2));
        _usedPublished = NextUsed;
        _signalledUsedValid = false;
    }

    /// <summary>Clears a fault and the pointers; used when the front end sets the ring up anew.</summary>
    public override void Reset()
    {
        _desc = _avail = _used = null;
        SetDirtyLog(null, null);
        Fault = null;
        NextAvail = 0;
        NextUsed = 0;
        _usedPublished = 0;
        _signalledUsedValid = false;
        ChainsPopped = 0;
        DetachInflight();
    }

    /// <summary>The driver's avail index (acquire: ring entries read after this see the driver's writes).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ushort ReadAvailIndex() => Volatile.Read(ref *(ushort*)(_avail + 2));

    /// <summary>
    /// Pops and validates the next chain. Returns null when none is available or the queue is broken
    /// (check <see cref="Fault"/>). The returned chain is reused by the next pop.
    /// </summary>
    public override DescriptorChain? Pop()
    {
        if (!IsReady)
            return null;
        if (_resubmitNext < _resubmitCount)
            return PopResubmitted();
        if (_availSeen == _nextAvail)
        {
            // Everything seen so far is popped: only now look at the driver's index again.
            ushort availIdx = ReadAvailIndex();
            ushort ahead = (ushort)(availIdx - _nextAvail);
            if (ahead == 0)
                return null;
            if (ahead > _size)
            {
                Break(RingErrorKind.AvailIndexOutOfRange, $"avail index moved {ahead} entries ahead, more than the queue size {_size}");
                return null;
            }
            _availSeen = availIdx;
        }
        ushort head = BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(_avail + 4 + 2 * (_nextAvail & (_size - 1)), 2));
        if (head >= _size)
        {
            Break(RingErrorKind.HeadOutOfRange, $"available head {head} is not below the queue size {_size}");
            return null;
        }
        if (WalkChain(head) is { } error)
        {
            Break(error.Kind, $"chain at head {head}: {error.Detail}");
            return null;
        }
        _nextAvail++;
        ChainsPopped++;
        if (_inflight != null)
            RecordTaken(head);
        Prefetch();
        return _chain;
    }

    private RingError? WalkChain(ushort head)
    {
        var chain = _chain;
        chain.Begin(head, _memory, _log);
        int budget = _size;          // descriptors the chain may still use (loops run out of budget)
        byte* table = _desc;
        int tableSize = _size;
        bool inIndirect = false;
        uint index = head;

        while (true)
        {
            if (--budget < 0)
                return new(RingErrorKind.ChainTooLong, inIndirect ? "indirect chain longer than its table (loop?)" : "chain longer than the queue size (loop?)");
            // One 16-byte load of the descriptor from shared memory; everything below uses the copy.
            var d = Unsafe.ReadUnaligned<Vector128<ulong>>(table + SplitRing.DescriptorSize * index);
            ulong addr = LittleEndian(d.GetElement(0));
            ulong rest = LittleEndian(d.GetElement(1));
            uint len = (uint)rest;
            ushort flags = (ushort)(rest >> 32);
            ushort next = (ushort)(rest >> 48);

            if ((flags & SplitRing.DescIndirect) != 0)
            {
                if (inIndirect)
                    return new(RingErrorKind.NestedIndirect, "indirect descriptor inside an indirect table");
                if (!IndirectAllowed)
                    return new(RingErrorKind.IndirectNotNegotiated, "indirect descriptor without VIRTIO_F_INDIRECT_DESC");
                if ((flags & SplitRing.DescNext) != 0)
                    return new(RingErrorKind.IndirectWithNext, "indirect descriptor with NEXT set");
                if (len == 0 || len % SplitRing.DescriptorSize != 0)
                    return new(RingErrorKind.IndirectTableLength, $"indirect table length {len} is not a non-zero multiple of {SplitRing.DescriptorSize}");
                int entries = (int)(len / SplitRing.DescriptorSize);
                if (entries > _size)
                    return new(RingErrorKind.IndirectTableLength, $"indirect table of {entries} entries exceeds the queue size {_size}");
                byte* t = _memory.GetPointer(addr, len);
                if (t == null)
                    return new(RingErrorKind.IndirectTableOutsideMemory, $"indirect table at 0x{addr:x} (+{len}) is not inside one mapped region");
                table = t;
                tableSize = entries;
                inIndirect = true;
                budget = Math.Min(budget + 1, entries);
                index = 0;
                continue;
            }

            // Add checks the buffer lies in guest memory (and keeps where, for the copy).
            if (chain.Add(addr, len, (flags & SplitRing.DescWrite) != 0) is { } error)
                return error;

            if ((flags & SplitRing.DescNext) == 0)
                return null;
            if (next >= tableSize)
                return new(RingErrorKind.NextOutOfRange, $"next index {next} is not below {(inIndirect ? "the indirect table size" : "the queue size")} {tableSize}");
            index = next;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong LittleEndian(ulong value) => BitConverter.IsLittleEndian ? value : BinaryPrimitives.ReverseEndianness(value);

    /// <summary>
    /// Pops available chains through <paramref name="handler"/>, at most <paramref name="budget"/> of
    /// them, and returns each with the length the handler wrote. The budget keeps a driver that never
    /// stops adding buffers from holding the thread: when it runs out, kicks stay suppressed and the
    /// caller must come back (<see cref="DrainResult.BudgetSpent"/>). Otherwise driver kicks are
    /// re-enabled with a re-check, so a buffer made available meanwhile is never left without a kick.
    /// The caller decides about notifying (<see cref="NeedsNotification"/>). Allocates nothing.
    /// </summary>
    /// <param name="rearm">
    /// Re-enable kicks when done (the normal case). A busy-polling caller passes false and calls
    /// <see cref="EnableNotification"/> itself before it sleeps.
    /// </param>
    public override DrainResult Drain<THandler>(ref THandler handler, bool rearm = true, int budget = DefaultBudget)
    {
        int handled = 0;
        DisableNotification();
        while (true)
        {
            DescriptorChain? chain;
            while (handled < budget && (chain = Pop()) != null)
            {
                PushUsed(chain.Head, handler.Handle(chain), publish: false);
                handled++;
            }
            PublishUsed();
            if (handled >= budget && IsReady)
                return new DrainResult(handled, BudgetSpent: true);
            if (!rearm || !EnableNotification())
                return new DrainResult(handled, BudgetSpent: false);
        }
    }

    /// <summary>
    /// Hints the CPU at what the next pops touch, while the caller works on the chain just popped: the
    /// next chain's first buffer (its descriptor was fetched one pop earlier) and the descriptor of
    /// the one after. Those lines were written by the driver's core; fetching them now hides the miss
    /// the copy would take (DPDK's vhost prefetches the same way). Only hints: nothing is validated or
    /// used here, and an address outside guest memory is simply not prefetched.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Prefetch()
    {
        if (!Sse.IsSupported)
            return;
        ushort ahead = (ushort)(_availSeen - _nextAvail);
        if (ahead == 0)
            return;
        int mask = _size - 1;
        ushort next = *(ushort*)(_avail + 4 + 2 * (_nextAvail & mask));
        if (next < _size && _memory.TryTranslate(*(ulong*)(_desc + SplitRing.DescriptorSize * next), out byte* buffer, out _))
            Sse.Prefetch0(buffer);
        if (ahead > 1)
        {
            ushort after = *(ushort*)(_avail + 4 + 2 * ((_nextAvail + 1) & mask));
            if (after < _size)
                Sse.Prefetch0(_desc + SplitRing.DescriptorSize * after);
        }
    }

    /// <summary>True when the driver has published buffers not yet popped (a cheap look for pollers).</summary>
    public override bool HasPending => IsReady && (_availSeen != _nextAvail || _resubmitNext < _resubmitCount || ReadAvailIndex() != _nextAvail);

    /// <summary>
    /// Gives back the last <paramref name="count"/> popped chains unconsumed, as if never popped (e.g. a
    /// received frame needed more buffers than the driver had posted). Only valid before PushUsed
    /// for them; they are validated again when popped again.
    /// </summary>
    public override void Rewind(int count)
    {
        if (_inflight != null)
        {
            RewindInflight(count);
            return;
        }
        _nextAvail -= (ushort)count; // still at or behind what was seen of the driver's index
        ChainsPopped -= (ulong)count;
    }

    /// <summary>
    /// Returns a chain to the driver with the number of bytes written into it. With
    /// <paramref name="publish"/> false the element is written but the used index is left for
    /// <see cref="PublishUsed"/>, so a burst costs one store to the cache line the driver polls.
    /// </summary>
    public override void PushUsed(ushort head, uint length, bool publish = true)
    {
        if (!IsReady)
            return;
        int offset = 4 + SplitRing.UsedElementSize * (NextUsed & (_size - 1));
        byte* elem = _used + offset;
        BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(elem, 4), head);
        BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(elem + 4, 4), length);
        if (_inflight != null)
            RecordUsed(head);
        NextUsed++;
        if (_usedLog != null)
            LogUsed((ulong)offset, SplitRing.UsedElementSize);
        if (publish)
            PublishUsed();
    }

    /// <summary>
    /// Publishes the used elements written so far (release: the elements are visible before the index).
    /// Call before the notification decision, before a stop or pause, and at the end of a burst.
    /// </summary>
    public override void PublishUsed()
    {
        // Not IsReady: a ring that broke in the middle of a burst still gives back what it handled.
        if (_used == null || _usedPublished == NextUsed)
            return;
        Volatile.Write(ref *(ushort*)(_used + 2), NextUsed);
        _usedPublished = NextUsed;
        LogUsed(2, 2);
        if (_batchCount != 0)
            EndBatch();
    }

    /// <summary>
    /// Whether the driver wants a used-buffer notification now (call after publishing used elements).
    /// Honours EVENT_IDX's used_event, or the NO_INTERRUPT flag without it.
    /// </summary>
    public override bool NeedsNotification()
    {
        if (!IsReady)
            return false;
        PublishUsed();
        // Full fence: our used-index store must be visible before we read the driver's suppression state.
        Interlocked.MemoryBarrier();
        if (!EventIdx)
            return (Volatile.Read(ref *(ushort*)_avail) & SplitRing.AvailNoInterrupt) == 0;

        ushort usedEvent = Volatile.Read(ref *(ushort*)(_avail + 4 + 2 * _size));
        ushort old = _signalledUsed;
        bool valid = _signalledUsedValid;
        _signalledUsed = NextUsed;
        _signalledUsedValid = true;
        return !valid || SplitRing.NeedEvent(usedEvent, NextUsed, old);
    }

    /// <summary>Asks the driver not to kick (we are about to poll the ring anyway).</summary>
    public override void DisableNotification()
    {
        if (!IsReady || EventIdx)
            return; // with EVENT_IDX, not moving avail_event is enough
        Volatile.Write(ref *(ushort*)_used, SplitRing.UsedNoNotify);
        LogUsed(0, 2);
    }

    /// <summary>
    /// Asks the driver to kick again when it adds buffers, then re-checks the ring. Returns true when
    /// buffers arrived meanwhile (the caller must keep processing, or a kick could be lost).
    /// </summary>
    public override bool EnableNotification()
    {
        if (!IsReady)
            return false;
        if (EventIdx)
        {
            ulong availEvent = 4 + (ulong)SplitRing.UsedElementSize * _size;
            Volatile.Write(ref *(ushort*)(_used + availEvent), NextAvail);
            LogUsed(availEvent, 2);
        }
        else
        {
            Volatile.Write(ref *(ushort*)_used, 0);
            LogUsed(0, 2);
        }
        Interlocked.MemoryBarrier();
        return ReadAvailIndex() != NextAvail;
    }
}

/// <summary>What one <see cref="Virtqueue.Drain{THandler}"/> call did.</summary>
/// <param name="Handled">Chains handled (and returned to the driver).</param>
/// <param name="BudgetSpent">The budget ran out: more may be waiting, kicks are still suppressed, come back.</param>
public readonly record struct DrainResult(int Handled, bool BudgetSpent);

/// <summary>Handles one chain and returns the number of bytes written into it (the used length).</summary>
public interface IChainHandler
{
    uint Handle(DescriptorChain chain);
}
