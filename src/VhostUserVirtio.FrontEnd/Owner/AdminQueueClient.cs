using System.Buffers.Binary;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.FrontEnd.Owner;

/// <summary>What came back for one admin command.</summary>
public sealed record AdminReply(ushort Status, ushort Qualifier, byte[] Result, uint UsedLength)
{
    public bool Ok => Status == 0;

    /// <summary>Status and qualifier by name, as a person wants to read them.</summary>
    public string Describe() =>
        $"{Name<AdminStatus>(Status)}/{Name<AdminQualifier>(Qualifier)} (status {Status}, qualifier {Qualifier})";

    private static string Name<T>(ushort value) where T : struct, Enum =>
        Enum.IsDefined(typeof(T), value) ? Enum.GetName(typeof(T), value)!.ToUpperInvariant() : "UNKNOWN";
}

/// <summary>
/// The owner driver's side of an admin virtqueue: builds the command container (header, data;
/// status, result), by default split over descriptors the way Linux does it, posts it, and reads
/// the reply. The layout knobs let a test send containers of any shape.
/// </summary>
public sealed class AdminQueueClient
{
    private readonly GuestRam _ram;
    private readonly DriverQueue _queue;

    public AdminQueueClient(GuestRam ram, DriverQueue queue)
    {
        _ram = ram;
        _queue = queue;
    }

    public DriverQueue Queue => _queue;

    /// <summary>The 24-byte header: opcode, group_type, reserved, group_member_id.</summary>
    public static byte[] Header(ushort opcode, ushort groupType, ulong memberId)
    {
        var h = new byte[24];
        BinaryPrimitives.WriteUInt16LittleEndian(h, opcode);
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(2), groupType);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(16), memberId);
        return h;
    }

    /// <summary>Sends one command and waits for its reply.</summary>
    public AdminReply Execute(ushort opcode, ushort groupType, ulong memberId, ReadOnlySpan<byte> data = default, int resultCapacity = 64)
    {
        ushort head = Post(opcode, groupType, memberId, data, resultCapacity);
        _queue.Notify();
        return Complete(head);
    }

    /// <summary>
    /// Posts one command without kicking, split the way Linux does it (header, data; status, result).
    /// Returns the head; kick, then <see cref="Complete"/> in posting order.
    /// </summary>
    public ushort Post(ushort opcode, ushort groupType, ulong memberId, ReadOnlySpan<byte> data, int resultCapacity)
    {
        var readable = Header(opcode, groupType, memberId).Concat(data.ToArray()).ToArray();
        return Post(readable, 8 + resultCapacity, readableSplit: data.IsEmpty ? [24] : [24, data.Length], writableSplit: resultCapacity == 0 ? [8] : [8, resultCapacity]);
    }

    /// <summary>
    /// Posts a container whose readable bytes are <paramref name="readable"/> split into descriptors of
    /// the given sizes, followed by <paramref name="writableLength"/> writable bytes split likewise.
    /// Returns the head; call <see cref="Complete"/> (after a kick) to read the reply.
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

    /// <summary>Waits for the next used element, which must be <paramref name="head"/> (commands complete in order).</summary>
    public AdminReply Complete(ushort head, int timeoutMs = 10_000)
    {
        var (id, len) = _queue.WaitUsed(timeoutMs);
        if (id != head)
            throw new FrontEndException($"admin queue completed head {id} before {head}: commands must complete in queue order");
        var (addr, length, area) = _inFlight[id];
        _inFlight.Remove(id);
        var written = _ram.Span(addr, length).ToArray();
        if (area is { } a)
            _freeAreas.Push(a);
        ushort status = length >= 2 ? BinaryPrimitives.ReadUInt16LittleEndian(written) : (ushort)0xffff;
        ushort qualifier = length >= 4 ? BinaryPrimitives.ReadUInt16LittleEndian(written.AsSpan(2)) : (ushort)0xffff;
        var result = len > 8 ? written.AsSpan(8, (int)Math.Min(len - 8, (uint)(length - 8))).ToArray() : [];
        return new AdminReply(status, qualifier, result, len);
    }
}
