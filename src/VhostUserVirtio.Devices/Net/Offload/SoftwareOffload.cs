using VhostUserVirtio.Devices.Switch;

namespace VhostUserVirtio.Devices.Net.Offload;

/// <summary>Where <see cref="SoftwareOffload"/> puts each complete frame it makes (a receive ring, a TAP).</summary>
public interface IFrameSink
{
    bool Take(ReadOnlySpan<byte> frame, out DropReason reason);
}

/// <summary>
/// Finishes what a sender's offload request left undone, for a port that cannot take the request
/// as it is: completes the checksum, or cuts a GSO frame into MSS-sized frames, as Open vSwitch's
/// userspace TSO and Linux's skb_segment do. The frame is copied out of the sender's memory once,
/// into a buffer of this port's; every check and every checksum is computed from that copy, which
/// the sender cannot change. The two buffers are made on first use and kept: nothing per packet.
/// One instance per port and worker (counting in that worker's lane), used by one thread at a time.
/// </summary>
public sealed class SoftwareOffload(PortCounters.Lane counters)
{
    private byte[] _frame = [];
    private byte[] _segment = [];

    /// <summary>
    /// Resolves <paramref name="frame"/>'s offload request and hands the result to
    /// <paramref name="sink"/>: one frame, or one per segment. False with the reason if the copy no
    /// longer fits its header (<see cref="DropReason.BadHeader"/>) or the sink refused a frame
    /// (segments already taken stay taken).
    /// </summary>
    public bool Resolve<TSink>(in Frame frame, ref TSink sink, out DropReason reason) where TSink : struct, IFrameSink
    {
        if (_frame.Length == 0)
        {
            _frame = new byte[Frame.MaxLength];
            _segment = new byte[Frame.MaxLength];
        }
        var header = frame.Offload;
        var copy = _frame.AsSpan(0, frame.CopyTo(_frame));
        if (!header.IsGso)
        {
            if (header.NeedsChecksum && !Checksum.Complete(copy, header.ChecksumStart, header.ChecksumOffset))
            {
                reason = DropReason.BadHeader;
                return false;
            }
            counters.ChecksumsCompleted++;
            return sink.Take(copy, out reason);
        }
        if (!Segmenter.TryCreate(copy, header, out var segmenter))
        {
            reason = DropReason.BadHeader;
            return false;
        }
        counters.FramesSegmented++;
        while (segmenter.Next(_segment, out int length))
        {
            if (!sink.Take(_segment.AsSpan(0, length), out reason))
                return false;
            counters.SegmentsMade++;
        }
        reason = default;
        return true;
    }
}
