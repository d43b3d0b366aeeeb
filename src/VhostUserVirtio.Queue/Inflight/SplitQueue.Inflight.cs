using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace VhostUserVirtio.Queue;

// Inflight tracking (vhost-user.rst "Inflight I/O tracking", split virtqueue): while a region is
// attached, every chain taken is marked in it (counter, inflight = 1) and every published batch of
// used elements is recorded around the used-index store (last_batch_head and next before it; the
// flags cleared and used_idx after it), so a back end killed at any instant leaves enough behind to
// resume: the chains taken and not given back are resubmitted, in the order they were taken, before
// anything new is popped. Without a region the data path pays one null check per pop and per push.
public sealed unsafe partial class SplitQueue
{
    private InflightQueueRegion? _inflight;
    private ulong _counter;
    // Heads to resubmit after a resume, in counter order; popped from _resubmitNext on.
    private ushort[] _resubmit = [];
    private ulong[] _resubmitCounters = [];
    private int _resubmitCount, _resubmitNext;
    // Chains popped from the avail ring since the resume, while the resubmit list is kept (a rewind
    // may reach back into it); once more than a ring's worth were popped no rewind can, and it is dropped.
    private int _availSinceResume;
    // The heads pushed since the last publish, in order: the batch the next publish records.
    private ushort[] _batch = [];
    private int _batchCount;

    /// <summary>The inflight region this ring records into, or null.</summary>
    public InflightQueueRegion? Inflight => _inflight;

    /// <summary>Chains still to be resubmitted from the inflight region before new ones are popped.</summary>
    public int ResubmitPending => _resubmitCount - _resubmitNext;

    /// <summary>
    /// Starts recording into <paramref name="region"/>; call after <see cref="Configure"/> and
    /// <see cref="SyncUsedIndex"/>, before the first pop. A fresh region (version 0) is initialised
    /// and the ring keeps its position. A region with state is resumed from, as libvhost-user's
    /// vu_check_queue_inflights does: a batch published to the used ring but not recorded is
    /// recorded, the next avail index becomes the used index plus the chains in flight, and those
    /// chains are popped again, oldest first, before any new one. A region that does not add up
    /// breaks the ring (<see cref="RingErrorKind.InflightRegionCorrupt"/>) and is left unchanged.
    /// </summary>
    public RingError? AttachInflight(InflightQueueRegion region)
    {
        ArgumentNullException.ThrowIfNull(region);
        if (_desc == null)
            throw new InvalidOperationException("configure the ring before attaching an inflight region");
        DetachInflight();
        int size = _size;
        if (_batch.Length != size)
        {
            _batch = new ushort[size];
            _resubmit = new ushort[size];
            _resubmitCounters = new ulong[size];
        }
        bool fresh = region.Version == 0;
        if (region.Resume(size, NextUsed, _resubmit, _resubmitCounters, out int count, out ulong counter) is { } error)
        {
            Break(error);
            return error;
        }
        _inflight = region;
        _counter = counter;
        _resubmitCount = count;
        if (!fresh)
        {
            _resubmitCount = PublishCompleted(region, count);
            NextAvail = (ushort)(NextUsed + _resubmitCount);
        }
        return null;
    }

    /// <summary>
    /// Chains whose used elements a previous back end wrote but did not publish: their work is done
    /// (a frame forwarded, a buffer filled), so they are published now instead of being done again.
    /// Only when the used ring holds exactly those heads in the slots after the used index, which it
    /// does unless the ring or region was tampered with; otherwise they are resubmitted like the rest.
    /// Returns how many chains remain to resubmit (the front of <c>_resubmit</c>, in counter order).
    /// </summary>
    private int PublishCompleted(InflightQueueRegion region, int count)
    {
        var completed = new HashSet<ushort>();
        for (int i = 0; i < count; i++)
            if (region.IsCompleted(_resubmit[i]))
                completed.Add(_resubmit[i]);
        int done = completed.Count;
        if (done == 0)
            return count;
        var expected = new HashSet<ushort>(completed);
        for (int i = 0; i < done; i++)
            if (UsedId(i) is not { } id || !expected.Remove(id))
                return count;
        for (int i = 0; i < done; i++)
            _batch[i] = UsedId(i)!.Value;
        _batchCount = done;
        NextUsed = (ushort)(NextUsed + done);
        PublishUsed();
        int kept = 0;
        for (int i = 0; i < count; i++)
        {
            if (completed.Contains(_resubmit[i]))
                continue;
            _resubmit[kept] = _resubmit[i];
            _resubmitCounters[kept] = _resubmitCounters[i];
            kept++;
        }
        return kept;
    }

    /// <summary>The head in the used element <paramref name="offset"/> slots past the used index, if it names one.</summary>
    private ushort? UsedId(int offset)
    {
        uint id = BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(_used + 4 + 8 * ((NextUsed + offset) & (_size - 1)), 4));
        return id < _size ? (ushort)id : null;
    }

    /// <summary>Stops recording (the region keeps what it holds).</summary>
    public void DetachInflight()
    {
        _inflight = null;
        _counter = 0;
        _resubmitCount = _resubmitNext = _availSinceResume = _batchCount = 0;
    }

    /// <summary>Pops the next chain to resubmit: validated again, it is the driver's memory.</summary>
    private DescriptorChain? PopResubmitted()
    {
        ushort head = _resubmit[_resubmitNext];
        if (WalkChain(head) is { } error)
        {
            Break(error.Kind, $"resubmitted chain at head {head}: {error.Detail}");
            return null;
        }
        _resubmitNext++;
        ChainsPopped++;
        return _chain;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void RecordTaken(ushort head)
    {
        _inflight!.Take(head, _counter++);
        if (_resubmitCount != 0 && ++_availSinceResume > _size)
            _resubmitCount = _resubmitNext = _availSinceResume = 0;
    }

    /// <summary>Rewinds chains popped from the avail ring (no longer in flight) and then resubmitted ones (still in flight).</summary>
    private void RewindInflight(int count)
    {
        int fromAvail = _resubmitCount == 0 ? count : Math.Min(count, _availSinceResume);
        for (int i = 0; i < fromAvail; i++)
        {
            _nextAvail--;
            ushort head = BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(_avail + 4 + 2 * (_nextAvail & (_size - 1)), 2));
            if (head < _size)
                _inflight!.Release(head);
        }
        if (_resubmitCount != 0)
        {
            _availSinceResume -= fromAvail;
            _resubmitNext = Math.Max(0, _resubmitNext - (count - fromAvail));
        }
        ChainsPopped -= (ulong)count;
    }

    /// <summary>A used element for <paramref name="head"/> was written: link it into the batch the next publish records.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void RecordUsed(ushort head)
    {
        if (head >= _size)
            return;
        if (_batchCount == _batch.Length)
            PublishUsed(); // more than a ring's worth unpublished (a driver reusing heads): record in parts
        if (_batchCount == 0)
            _inflight!.BeginBatch(head);
        else
            _inflight!.Link(_batch[_batchCount - 1], head);
        _batch[_batchCount++] = head;
        _inflight!.Complete(head);
    }

    /// <summary>The used index of the batch is published (release): now its chains are done.</summary>
    private void EndBatch()
    {
        _inflight!.EndBatch(_batch.AsSpan(0, _batchCount), NextUsed);
        _batchCount = 0;
    }
}
