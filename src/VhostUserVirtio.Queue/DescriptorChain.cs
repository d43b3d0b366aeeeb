using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Queue;

/// <summary>
/// One buffer of a chain: guest physical address, length, direction, already bounds-checked; and where
/// it lies in our mapping when it lies in one region (<see cref="Host"/>), so the copy does not
/// translate the address again. Zero when it straddles two regions: the cursors then translate run
/// by run. Valid as long as the chain's memory snapshot is.
/// </summary>
public readonly record struct Segment(ulong Address, uint Length, bool Writable, nint Host = 0);

/// <summary>
/// A validated descriptor chain, copied out of guest memory once (so a guest rewriting its table
/// while we work cannot change what we checked). Readable segments come first, then writable ones.
/// Reused by its queue for every pop: no allocation per chain.
/// </summary>
public sealed class DescriptorChain
{
    private Segment[] _segments;

    public DescriptorChain(int capacity) => _segments = new Segment[Math.Max(capacity, 1)];

    public ushort Head { get; private set; }
    public int ReadableCount { get; private set; }
    public int WritableCount { get; private set; }
    /// <summary>Total bytes the device may read.</summary>
    public uint ReadableLength { get; private set; }
    /// <summary>Total bytes the device may write.</summary>
    public uint WritableLength { get; private set; }
    /// <summary>The memory snapshot the chain was validated against.</summary>
    public GuestMemory Memory { get; private set; } = GuestMemory.Empty;
    /// <summary>The dirty log the chain's writes are marked in, while logging is on (else null).</summary>
    public DirtyLog? Log { get; private set; }

    public ReadOnlySpan<Segment> Readable => _segments.AsSpan(0, ReadableCount);
    public ReadOnlySpan<Segment> Writable => _segments.AsSpan(ReadableCount, WritableCount);

    /// <summary>A cursor over the readable bytes.</summary>
    public ChainReader Reader() => new(Memory, Readable);

    /// <summary>A cursor over the writable bytes.</summary>
    public ChainWriter Writer() => new(Memory, Writable, Log);

    /// <summary>
    /// Writes <paramref name="data"/> at byte <paramref name="offset"/> of the writable part, across
    /// segments if need be (e.g. to patch a header field after the rest was written). False if the
    /// writable part is too short.
    /// </summary>
    public bool WriteAt(uint offset, ReadOnlySpan<byte> data)
    {
        if ((ulong)offset + (ulong)data.Length > WritableLength)
            return false;
        foreach (var seg in Writable)
        {
            if (data.IsEmpty)
                break;
            if (offset >= seg.Length)
            {
                offset -= seg.Length;
                continue;
            }
            int n = (int)Math.Min(seg.Length - offset, (uint)data.Length);
            if (!Memory.Write(seg.Address + offset, data[..n]))
                return false;
            Log?.Mark(seg.Address + offset, (ulong)n);
            data = data[n..];
            offset = 0;
        }
        return data.IsEmpty;
    }

    /// <summary>
    /// <paramref name="length"/> readable bytes from <paramref name="offset"/> as one span, when they lie
    /// in one segment that was translated at validation; false otherwise (use <see cref="Reader"/>).
    /// The bytes are the driver's: they may change while read.
    /// </summary>
    public unsafe bool TryGetReadable(uint offset, int length, out ReadOnlySpan<byte> span)
    {
        foreach (var seg in Readable)
        {
            if (offset < seg.Length)
            {
                bool whole = seg.Host != 0 && length >= 0 && seg.Length - offset >= (uint)length;
                span = whole ? new ReadOnlySpan<byte>((byte*)seg.Host + offset, length) : default;
                return whole;
            }
            offset -= seg.Length;
        }
        span = default;
        return false;
    }

    /// <summary>
    /// The first <paramref name="length"/> writable bytes as one span, when the first writable segment
    /// holds them and was translated at validation; false otherwise (use <see cref="Writer"/>, which
    /// also marks the dirty log).
    /// </summary>
    public unsafe bool TryGetFirstWritable(int length, out Span<byte> span)
    {
        bool whole = WritableCount > 0 && length >= 0 && _segments[ReadableCount] is { Host: not 0 } seg && seg.Length >= (uint)length;
        span = whole ? new Span<byte>((byte*)_segments[ReadableCount].Host, length) : default;
        return whole;
    }

    internal void EnsureCapacity(int capacity)
    {
        if (_segments.Length < capacity)
            _segments = new Segment[capacity];
    }

    internal void Begin(ushort head, GuestMemory memory, DirtyLog? log)
    {
        Head = head;
        Memory = memory;
        Log = log;
        ReadableCount = WritableCount = 0;
        ReadableLength = WritableLength = 0;
    }

    /// <summary>Names the chain once its id is known (the packed ring carries it in the chain's last descriptor).</summary>
    internal void SetHead(ushort head) => Head = head;

    /// <summary>
    /// Appends a segment; returns the error when it lies outside the chain's memory or breaks ordering
    /// or size rules. The address is translated here, once: the cursors use the result.
    /// </summary>
    internal unsafe RingError? Add(ulong address, uint length, bool writable)
    {
        nint host = 0;
        if (length != 0)
        {
            if (Memory.TryTranslate(address, out byte* p, out ulong available) && available >= length)
                host = (nint)p;
            else if (!Memory.IsRangeMapped(address, length))
                return new(RingErrorKind.BufferOutsideMemory, $"buffer 0x{address:x} (+{length}) is outside guest memory");
        }
        int count = ReadableCount + WritableCount;
        if (count >= _segments.Length)
            return new(RingErrorKind.ChainTooLong, "descriptor chain longer than the queue size");
        if (writable)
        {
            if (WritableLength + (ulong)length > uint.MaxValue)
                return new(RingErrorKind.ChainTooLarge, "writable part of the chain exceeds 4 GiB");
            WritableLength += length;
            WritableCount++;
        }
        else
        {
            if (WritableCount > 0)
                return new(RingErrorKind.ReadableAfterWritable, "readable descriptor after a writable one");
            if (ReadableLength + (ulong)length > uint.MaxValue)
                return new(RingErrorKind.ChainTooLarge, "readable part of the chain exceeds 4 GiB");
            ReadableLength += length;
            ReadableCount++;
        }
        _segments[count] = new Segment(address, length, writable, host);
        return null;
    }
}
