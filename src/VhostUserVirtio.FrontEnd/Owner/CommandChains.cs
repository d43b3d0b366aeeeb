namespace VhostUserVirtio.FrontEnd.Owner;

/// <summary>
/// Posts command chains (device-readable bytes, then device-writable room) on a driver queue and
/// collects what the device wrote, in posting order. The admin queue and the transport queue frame
/// their commands differently but post and complete them the same way.
/// </summary>
public sealed class CommandChains
{
    private readonly GuestRam _ram;
    private readonly DriverQueue _queue;
    private readonly string _name;

    /// <param name="name">How errors name the queue, e.g. "admin queue".</param>
    public CommandChains(GuestRam ram, DriverQueue queue, string name)
    {
        _ram = ram;
        _queue = queue;
        _name = name;
    }

    public DriverQueue Queue => _queue;

    /// <summary>
    /// Posts a chain whose readable bytes are <paramref name="readable"/> split into descriptors of
    /// the given sizes, followed by <paramref name="writableLength"/> writable bytes split likewise.
    /// Returns the head; kick, then <see cref="Complete"/>.
    /// </summary>
    public ushort Post(ReadOnlySpan<byte> readable, int writableLength, int[] readableSplit, int[] writableSplit)
    {
        if (readableSplit.Sum() != readable.Length)
            throw new ArgumentException("readable split does not add up");
        if (writableSplit.Sum() != writableLength)
            throw new ArgumentException("writable split does not add up");
        // Commands reuse buffer areas: a long-running owner driver must not use up its RAM.
        bool pooled = readable.Length <= AreaHalf && writableLength <= AreaHalf;
        ulong area = pooled ? (_freeAreas.Count > 0 ? _freeAreas.Pop() : _ram.Allocate(2 * AreaHalf, 64))
                            : _ram.Allocate((ulong)(readable.Length + writableLength + 1), 64);
        ulong w = pooled ? area + AreaHalf : area + (ulong)readable.Length;
        var buffers = new List<BufferSpec>();
        int offset = 0;
        foreach (int size in readableSplit)
        {
            readable.Slice(offset, size).CopyTo(_ram.Span(area + (ulong)offset, size));
            buffers.Add(new BufferSpec(area + (ulong)offset, (uint)size, false));
            offset += size;
        }
        _ram.Span(w, writableLength).Fill(0xee); // to see what the device wrote
        offset = 0;
        foreach (int size in writableSplit)
        {
            buffers.Add(new BufferSpec(w + (ulong)offset, (uint)size, true));
            offset += size;
        }
        ushort head = _queue.AddChain(buffers.ToArray());
        _inFlight[head] = (w, writableLength, pooled ? area : null);
        return head;
    }

    /// <summary>Each pooled area holds a command's readable part, then (at this offset) its writable part.</summary>
    private const int AreaHalf = 8192;
    private readonly Stack<ulong> _freeAreas = new();
    private readonly Dictionary<ushort, (ulong Writable, int Length, ulong? Area)> _inFlight = new();

    /// <summary>
    /// Waits for the next used element, which must be <paramref name="head"/> (commands complete in
    /// order). Returns the whole writable part (unwritten bytes read 0xee) and the used length.
    /// </summary>
    public (byte[] Written, uint UsedLength) Complete(ushort head, int timeoutMs = 10_000)
    {
        var (id, len) = _queue.WaitUsed(timeoutMs);
        if (id != head)
            throw new FrontEndException($"{_name} completed head {id} before {head}: commands must complete in queue order");
        var (addr, length, area) = _inFlight[id];
        _inFlight.Remove(id);
        var written = _ram.Span(addr, length).ToArray();
        if (area is { } a)
            _freeAreas.Push(a);
        return (written, len);
    }
}
