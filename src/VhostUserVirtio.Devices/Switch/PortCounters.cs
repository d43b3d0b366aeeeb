using VhostUserVirtio.Backend;
using VhostUserVirtio.Backend.Diagnostics;

namespace VhostUserVirtio.Devices.Switch;

/// <summary>Why the switch or a port dropped a frame.</summary>
public enum DropReason
{
    /// <summary>The destination had no receive buffer posted (or not enough for the frame).</summary>
    NoRxBuffer,
    /// <summary>The destination's receive buffers are too small for the frame (no mergeable buffers).</summary>
    RxBufferTooSmall,
    /// <summary>The destination has no started, enabled receive queue (no driver, or link down).</summary>
    NoRxQueue,
    /// <summary>The destination's receive filter (MAC, promiscuous, multicast, broadcast modes) refused it.</summary>
    Filtered,
    /// <summary>Shorter than an Ethernet header.</summary>
    Runt,
    /// <summary>Larger than the port's MTU allows.</summary>
    Oversize,
    /// <summary>
    /// A transmit header asked for an offload that was not negotiated, or one that does not fit its
    /// frame (checksum outside it, gso_size or gso_type wrong for it, not TCP over the stated IP
    /// version). Counted on a receiver when its own copy of the frame no longer fits the request.
    /// </summary>
    BadHeader,
    /// <summary>The learned port of the destination is the sender itself.</summary>
    Hairpin,
    /// <summary>The port's link is down.</summary>
    LinkDown,
    /// <summary>The uplink could not take it (TAP write failed or would block).</summary>
    UplinkError,
    /// <summary>
    /// The sender is spoof-checked (a VF the owner has not trusted) and the frame's source MAC is not
    /// the sender's own. Dropped before the switch: it is neither learned nor forwarded.
    /// </summary>
    SpoofedSource,
}

/// <summary>
/// Per-port counters, and the switch's learning state of the port. "Tx" is what the port's user
/// sent into the switch, "Rx" what the switch delivered to it. Each data-path worker counts in its
/// own lane (no shared cache line, no atomic instruction per packet); reads, from anywhere, sum the
/// lanes, so they are exact once the workers are quiet and never lose a count.
/// </summary>
public sealed class PortCounters
{
    private static readonly int DropKinds = Enum.GetValues<DropReason>().Length;

    /// <summary>One worker's counts; only that worker writes them.</summary>
    public sealed class Lane
    {
        public long TxPackets;
        public long TxBytes;
        public long RxPackets;
        public long RxBytes;
        public long MacsNotLearned;
        public long OffloadsPassedThrough;
        public long ChecksumsCompleted;
        public long FramesSegmented;
        public long SegmentsMade;
        internal readonly long[] Drops = new long[DropKinds];
        // Keeps two workers' lanes, allocated one after the other, off one cache line.
#pragma warning disable CS0169 // never used: padding only
        private readonly long _pad0, _pad1, _pad2, _pad3, _pad4, _pad5, _pad6, _pad7;
#pragma warning restore CS0169
    }

    private readonly Lane?[] _lanes = new Lane?[Worker.MaxLanes];
    private int _learnedMacs;

    /// <summary>The calling worker's lane (created on its first count).</summary>
    public Lane Local => LaneAt(Worker.CurrentLane);

    /// <summary>Lane <paramref name="lane"/> (the caller's <see cref="Worker.CurrentLane"/>, read once per frame).</summary>
    public Lane LaneAt(int lane) => _lanes[lane] ?? CreateLane(lane);

    private Lane CreateLane(int index)
    {
        var lane = new Lane();
        return Interlocked.CompareExchange(ref _lanes[index], lane, null) ?? lane;
    }

    private long Sum(Func<Lane, long> field)
    {
        long total = 0;
        foreach (var lane in _lanes)
            if (lane != null)
                total += field(lane);
        return total;
    }

    // A set (a migrated member resuming its counts, with its workers quiet) puts the value in the
    // caller's lane and clears the others.
    private void Set(Action<Lane, long> field, long value)
    {
        foreach (var lane in _lanes)
            if (lane != null)
                field(lane, 0);
        field(Local, value);
    }

    public long TxPackets { get => Sum(l => Volatile.Read(ref l.TxPackets)); set => Set((l, v) => l.TxPackets = v, value); }
    public long TxBytes { get => Sum(l => Volatile.Read(ref l.TxBytes)); set => Set((l, v) => l.TxBytes = v, value); }
    public long RxPackets { get => Sum(l => Volatile.Read(ref l.RxPackets)); set => Set((l, v) => l.RxPackets = v, value); }
    public long RxBytes { get => Sum(l => Volatile.Read(ref l.RxBytes)); set => Set((l, v) => l.RxBytes = v, value); }

    /// <summary>Frames delivered with the sender's offload request passed on in the virtio-net header (checksum or GSO left to the receiver).</summary>
    public long OffloadsPassedThrough => Sum(l => Volatile.Read(ref l.OffloadsPassedThrough));
    /// <summary>Frames for this port whose checksum the switch completed (the port did not take NEEDS_CSUM).</summary>
    public long ChecksumsCompleted => Sum(l => Volatile.Read(ref l.ChecksumsCompleted));
    /// <summary>GSO frames for this port the switch cut into segments (the port did not take them whole).</summary>
    public long FramesSegmented => Sum(l => Volatile.Read(ref l.FramesSegmented));
    /// <summary>Segments those made.</summary>
    public long SegmentsMade => Sum(l => Volatile.Read(ref l.SegmentsMade));

    /// <summary>Source MACs the switch did not learn because the port was at its limit (the frames were still forwarded).</summary>
    public long MacsNotLearned { get => Sum(l => Volatile.Read(ref l.MacsNotLearned)); set => Set((l, v) => l.MacsNotLearned = v, value); }

    /// <summary>MACs the switch has learned on this port now (at most its per-port limit).</summary>
    public int LearnedMacs => Volatile.Read(ref _learnedMacs);

    /// <summary>Changed under the switch's learning lock only.</summary>
    internal void AddLearned(int delta) => Volatile.Write(ref _learnedMacs, _learnedMacs + delta);

    /// <summary>Bounds the switch's warnings about this port reaching its learning limit.</summary>
    internal LogRateLimit LearnLimitLog { get; } = new(burst: 5, window: TimeSpan.FromSeconds(10));

    public long Drops(DropReason reason) => Sum(l => Volatile.Read(ref l.Drops[(int)reason]));

    public long TotalDrops => Enum.GetValues<DropReason>().Sum(Drops);

    public void Drop(DropReason reason) => Local.Drops[(int)reason]++;

    /// <summary>Sets one drop counter (a migrated member resumes its counts), with the member's workers quiet.</summary>
    public void SetDrops(DropReason reason, long count) => Set((l, v) => l.Drops[(int)reason] = v, count);

    /// <summary>Non-zero drop counters, for status output.</summary>
    public IEnumerable<(DropReason Reason, long Count)> NonZeroDrops() =>
        Enum.GetValues<DropReason>().Select(r => (r, Drops(r))).Where(d => d.Item2 != 0);

    public override string ToString() =>
        $"tx {TxPackets} pkts/{TxBytes} B, rx {RxPackets} pkts/{RxBytes} B, macs {LearnedMacs}, drops {TotalDrops}" +
        (OffloadsPassedThrough + FramesSegmented + ChecksumsCompleted != 0
            ? $", offloads passed {OffloadsPassedThrough} segmented {FramesSegmented}/{SegmentsMade} csum {ChecksumsCompleted}" : "") +
        string.Concat(NonZeroDrops().Select(d => $" {d.Reason}={d.Count}"));
}
