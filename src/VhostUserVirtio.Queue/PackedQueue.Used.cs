using System.Buffers.Binary;
using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Queue;

// The device's writes: used descriptors in bursts, and the two event suppression structures.
public sealed unsafe partial class PackedQueue
{
    /// <summary>
    /// Queues a used entry for <paramref name="head"/> (the buffer id) with the bytes written. It is
    /// written to the ring with the rest of the burst by <see cref="PublishUsed"/> (at once when
    /// <paramref name="publish"/>). An id not in flight is ignored: only chains popped come back.
    /// </summary>
    public override void PushUsed(ushort head, uint length, bool publish = true)
    {
        if (!IsReady || head >= _size || _inFlight[head] == 0)
            return;
        if (_shadowCount == _size)
            PublishUsed();
        int n = _shadowCount++;
        _shadowId[n] = head;
        _shadowLength[n] = length;
        _shadowSlots[n] = _inFlight[head];
        _inFlightSlots -= _inFlight[head];
        _inFlight[head] = 0;
        if (publish)
            PublishUsed();
    }

    /// <summary>
    /// Writes the queued used entries to the ring as one burst: every id and length first, then the
    /// flags of all but the first entry, then the first entry's flags last (release). The driver reads
    /// used descriptors in ring order and stops at the first whose flags are not flipped, so it never
    /// sees part of a burst (DPDK's vhost flushes its shadow used ring the same way).
    /// </summary>
    public override void PublishUsed()
    {
        // Not IsReady: a ring that broke in the middle of a burst still gives back what it handled.
        int count = _shadowCount;
        if (_desc == null || count == 0)
            return;
        _shadowCount = 0;
        ushort slot = _usedIdx;
        bool wrap = _usedWrap;
        for (int i = 0; i < count; i++)
        {
            byte* d = _desc + PackedRing.DescriptorSize * slot;
            BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(d + 8, 4), _shadowLength[i]);
            BinaryPrimitives.WriteUInt16LittleEndian(new Span<byte>(d + PackedRing.IdOffset, 2), _shadowId[i]);
            Advance(ref slot, ref wrap, _shadowSlots[i]);
        }
        ushort headSlot = _usedIdx;
        ushort headFlags = UsedFlags(_usedWrap, _shadowLength[0]);
        slot = _usedIdx;
        wrap = _usedWrap;
        Advance(ref slot, ref wrap, _shadowSlots[0]);
        for (int i = 1; i < count; i++)
        {
            // Release: this entry's id and length are visible before its flags.
            Volatile.Write(ref *(ushort*)(_desc + PackedRing.DescriptorSize * slot + PackedRing.FlagsOffset), UsedFlags(wrap, _shadowLength[i]));
            Advance(ref slot, ref wrap, _shadowSlots[i]);
        }
        // Release: everything above is visible before the driver can see the burst's first entry.
        Volatile.Write(ref *(ushort*)(_desc + PackedRing.DescriptorSize * headSlot + PackedRing.FlagsOffset), headFlags);
        if (_ringLog != null)
            LogUsed(_usedIdx, count);
        _usedIdx = slot;
        _usedWrap = wrap;
        NextUsed = slot;
    }

    private static ushort UsedFlags(bool wrap, uint length) =>
        (ushort)(PackedRing.UsedFlags(wrap) | (length != 0 ? PackedRing.DescWrite : 0));

    /// <summary>Marks the descriptors a burst wrote in the dirty log, after they are in place.</summary>
    private void LogUsed(ushort slot, int count)
    {
        bool wrap = false;
        for (int i = 0; i < count; i++)
        {
            _ringLog!.Mark(DescriptorTable + (ulong)(PackedRing.DescriptorSize * slot), PackedRing.DescriptorSize);
            Advance(ref slot, ref wrap, _shadowSlots[i]);
        }
    }

    /// <summary>
    /// Whether the driver wants a used-buffer notification now (after publishing). Honours the driver
    /// area: DISABLE, ENABLE, or with EVENT_IDX, DESC at off_wrap.
    /// </summary>
    public override bool NeedsNotification()
    {
        if (!IsReady)
            return false;
        PublishUsed();
        // Full fence: our used flags must be visible before we read the driver's suppression state.
        Interlocked.MemoryBarrier();
        ushort flags = Volatile.Read(ref *(ushort*)(_driverEvent + PackedRing.EventFlagsOffset));
        if (!EventIdx)
            return flags != PackedRing.EventDisable;
        // The position is remembered at every decision, so a driver switching to DESC later is
        // compared with the last decision, not with the first.
        ushort old = _signalledUsed;
        bool valid = _signalledUsedValid;
        _signalledUsed = _usedIdx;
        _signalledUsedValid = true;
        if (flags != PackedRing.EventDesc)
            return flags != PackedRing.EventDisable;
        ushort offWrap = Volatile.Read(ref *(ushort*)_driverEvent);
        return !valid || PackedRing.NeedEvent(offWrap, _usedIdx, _usedWrap, old, _size);
    }

    /// <summary>Asks the driver not to kick (we are about to poll the ring anyway).</summary>
    public override void DisableNotification()
    {
        if (!IsReady || EventIdx)
            return; // with EVENT_IDX, not moving off_wrap is enough (as the split ring's avail_event)
        WriteDeviceFlags(PackedRing.EventDisable);
    }

    public override bool EnableNotification()
    {
        if (!IsReady)
            return false;
        if (EventIdx)
        {
            Volatile.Write(ref *(ushort*)_deviceEvent, PackedRing.Pack(_availIdx, _availWrap));
            WriteDeviceFlags(PackedRing.EventDesc);
        }
        else
        {
            WriteDeviceFlags(PackedRing.EventEnable);
        }
        Interlocked.MemoryBarrier();
        return PackedRing.IsAvailable(ReadFlags(_availIdx), _availWrap);
    }

    private void WriteDeviceFlags(ushort flags)
    {
        Volatile.Write(ref *(ushort*)(_deviceEvent + PackedRing.EventFlagsOffset), flags);
        _ringLog?.Mark(UsedRing, PackedRing.EventSuppressionSize);
    }

    // The same loop as SplitQueue.Drain, written in each sealed class so Pop and PushUsed bind to it
    // directly: one virtual call per burst (Drain), none per chain.
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
}
