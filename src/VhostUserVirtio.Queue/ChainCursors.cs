using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Queue;

/// <summary>
/// Walks the readable bytes of a chain as spans over guest memory, without copying. A segment that
/// straddles two memory regions comes out as two spans.
/// </summary>
public unsafe ref struct ChainReader
{
    private SegmentWalk _walk;

    internal ChainReader(GuestMemory memory, ReadOnlySpan<Segment> segments) => _walk = new SegmentWalk(memory, segments);

    /// <summary>Next run of at most <paramref name="max"/> readable bytes; false when the chain is exhausted.</summary>
    public bool TryNext(int max, out ReadOnlySpan<byte> span)
    {
        bool ok = _walk.Next(max, out byte* p, out int n, out _);
        span = ok ? new ReadOnlySpan<byte>(p, n) : default;
        return ok;
    }

    /// <summary>Skips <paramref name="count"/> bytes; returns how many were skipped.</summary>
    public int Skip(int count)
    {
        int skipped = 0;
        while (skipped < count && TryNext(count - skipped, out var s))
            skipped += s.Length;
        return skipped;
    }

    /// <summary>Copies readable bytes into <paramref name="destination"/>; returns how many.</summary>
    public int Read(scoped Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length && TryNext(destination.Length - done, out var s))
        {
            s.CopyTo(destination[done..]);
            done += s.Length;
        }
        return done;
    }
}

/// <summary>
/// Fills the writable bytes of a chain, across segments and regions; counts what was written. While
/// dirty logging is on, every page written is marked in the log after the bytes are in place: a
/// front end that syncs the log meanwhile sees the page again on its next pass, never a cleared
/// bit over a page still being written.
/// </summary>
public unsafe ref struct ChainWriter
{
    private SegmentWalk _walk;
    private readonly DirtyLog? _log;

    internal ChainWriter(GuestMemory memory, ReadOnlySpan<Segment> segments, DirtyLog? log)
    {
        _walk = new SegmentWalk(memory, segments);
        _log = log;
        Written = 0;
    }

    /// <summary>Bytes written so far: what the used element's len must report.</summary>
    public uint Written { get; private set; }

    /// <summary>
    /// Next writable run of at most <paramref name="max"/> bytes, counted as written. With dirty
    /// logging on, its pages are marked when it is handed out (the caller writes it afterwards);
    /// <see cref="Write"/> and <see cref="CopyFrom"/> mark after copying, as migration wants.
    /// </summary>
    public bool TryNext(int max, out Span<byte> span)
    {
        bool ok = Next(max, out span, out ulong gpa);
        if (ok && _log != null)
            _log.Mark(gpa, (ulong)span.Length);
        return ok;
    }

    private bool Next(int max, out Span<byte> span, out ulong gpa)
    {
        bool ok = _walk.Next(max, out byte* p, out int n, out gpa);
        span = ok ? new Span<byte>(p, n) : default;
        Written += (uint)span.Length;
        return ok;
    }

    /// <summary>Copies <paramref name="source"/> in; returns how many bytes fitted.</summary>
    public int Write(scoped ReadOnlySpan<byte> source)
    {
        int done = 0;
        while (done < source.Length && Next(source.Length - done, out var s, out ulong gpa))
        {
            source.Slice(done, s.Length).CopyTo(s);
            _log?.Mark(gpa, (ulong)s.Length);
            done += s.Length;
        }
        return done;
    }

    /// <summary>Copies everything the reader still has, until either side runs out; returns bytes copied.</summary>
    public int CopyFrom(ref ChainReader reader)
    {
        int total = 0;
        while (Next(int.MaxValue, out var dst, out ulong gpa))
        {
            int filled = 0;
            while (filled < dst.Length && reader.TryNext(dst.Length - filled, out var src))
            {
                src.CopyTo(dst[filled..]);
                filled += src.Length;
            }
            total += filled;
            _log?.Mark(gpa, (ulong)filled);
            if (filled < dst.Length)
            {
                // Reader ran dry: give back the part of this run that was not filled.
                Unwrite((uint)(dst.Length - filled));
                break;
            }
        }
        return total;
    }

    private void Unwrite(uint count)
    {
        _walk.Back(count);
        Written -= count;
    }
}

/// <summary>
/// The walk both cursors share: segment by segment, region by region, as host pointers. Segments
/// were validated and translated at pop time; one that straddles regions is translated run by run
/// here (that translation succeeds, and is checked anyway rather than trusted).
/// </summary>
internal unsafe ref struct SegmentWalk
{
    private readonly GuestMemory _memory;
    private readonly ReadOnlySpan<Segment> _segments;
    private int _index;
    private uint _offset;

    public SegmentWalk(GuestMemory memory, ReadOnlySpan<Segment> segments)
    {
        _memory = memory;
        _segments = segments;
        _index = 0;
        _offset = 0;
    }

    /// <summary>Next run: host pointer, length, and the guest physical address it starts at.</summary>
    public bool Next(int max, out byte* pointer, out int length, out ulong gpa)
    {
        while (_index < _segments.Length)
        {
            var seg = _segments[_index];
            if (_offset >= seg.Length)
            {
                _index++;
                _offset = 0;
                continue;
            }
            gpa = seg.Address + _offset;
            ulong available;
            if (seg.Host != 0)
            {
                // Translated (and bounds-checked) when the chain was validated.
                pointer = (byte*)seg.Host + _offset;
                available = seg.Length - _offset;
            }
            else if (!_memory.TryTranslate(gpa, out pointer, out available))
            {
                break;
            }
            length = (int)Math.Min(Math.Min(available, seg.Length - _offset), (ulong)max);
            _offset += (uint)length;
            return true;
        }
        pointer = null;
        length = 0;
        gpa = 0;
        return false;
    }

    /// <summary>Steps back within the current segment (only over bytes just handed out by <see cref="Next"/>).</summary>
    public void Back(uint count) => _offset -= count;
}
