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
/// sent into the switch, "Rx" what the switch delivered to it. Written on the data-path worker only;
/// read from anywhere (64-bit reads are atomic).
/// </summary>
public sealed class PortCounters
{
    private readonly long[] _drops = new long[Enum.GetValues<DropReason>().Length];
    private int _learnedMacs;

    public long TxPackets;
    public long TxBytes;
    public long RxPackets;
    public long RxBytes;

    /// <summary>Frames delivered with the sender's offload request passed on in the virtio-net header (checksum or GSO left to the receiver).</summary>
    public long OffloadsPassedThrough;
    /// <summary>Frames for this port whose checksum the switch completed (the port did not take NEEDS_CSUM).</summary>
    public long ChecksumsCompleted;
    /// <summary>GSO frames for this port the switch cut into segments (the port did not take them whole).</summary>
    public long FramesSegmented;
    /// <summary>Segments those made.</summary>
    public long SegmentsMade;

    /// <summary>Source MACs the switch did not learn because the port was at its limit (the frames were still forwarded).</summary>
    public long MacsNotLearned;

    /// <summary>MACs the switch has learned on this port now (at most its per-port limit).</summary>
    public int LearnedMacs => Volatile.Read(ref _learnedMacs);

    internal void AddLearned(int delta) => _learnedMacs += delta;

    /// <summary>Bounds the switch's warnings about this port reaching its learning limit.</summary>
    internal LogRateLimit LearnLimitLog { get; } = new(burst: 5, window: TimeSpan.FromSeconds(10));

    public long Drops(DropReason reason) => Volatile.Read(ref _drops[(int)reason]);

    public long TotalDrops => _drops.Sum();

    public void Drop(DropReason reason) => _drops[(int)reason]++;

    /// <summary>Sets one drop counter (a migrated member resumes its counts); on the data-path worker.</summary>
    public void SetDrops(DropReason reason, long count) => _drops[(int)reason] = count;

    /// <summary>Non-zero drop counters, for status output.</summary>
    public IEnumerable<(DropReason Reason, long Count)> NonZeroDrops() =>
        Enum.GetValues<DropReason>().Select(r => (r, Drops(r))).Where(d => d.Item2 != 0);

    public override string ToString() =>
        $"tx {TxPackets} pkts/{TxBytes} B, rx {RxPackets} pkts/{RxBytes} B, macs {LearnedMacs}, drops {TotalDrops}" +
        (OffloadsPassedThrough + FramesSegmented + ChecksumsCompleted != 0
            ? $", offloads passed {OffloadsPassedThrough} segmented {FramesSegmented}/{SegmentsMade} csum {ChecksumsCompleted}" : "") +
        string.Concat(NonZeroDrops().Select(d => $" {d.Reason}={d.Count}"));
}
