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
    private readonly DriverQueue _queue;
    private readonly CommandChains _chains;

    public AdminQueueClient(GuestRam ram, DriverQueue queue)
    {
        _queue = queue;
        _chains = new CommandChains(ram, queue, "admin queue");
    }

    public DriverQueue Queue => _queue;

    /// <summary>The 24-byte header: opcode, group_type, reserved, group_member_id.</summary>
    public static byte[] Header(ushort opcode, ushort groupType, ulong memberId)
    {
        var h = new byte[AdminLayout.HeaderSize];
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
        return Post(readable, AdminLayout.StatusSize + resultCapacity, readableSplit: data.IsEmpty ? [AdminLayout.HeaderSize] : [AdminLayout.HeaderSize, data.Length],
            writableSplit: resultCapacity == 0 ? [AdminLayout.StatusSize] : [AdminLayout.StatusSize, resultCapacity]);
    }

    /// <summary>
    /// Posts a container whose readable bytes are <paramref name="readable"/> split into descriptors of
    /// the given sizes, followed by <paramref name="writableLength"/> writable bytes split likewise.
    /// Returns the head; call <see cref="Complete"/> (after a kick) to read the reply.
    /// </summary>
    public ushort Post(ReadOnlySpan<byte> readable, int writableLength, int[] readableSplit, int[] writableSplit) =>
        _chains.Post(readable, writableLength, readableSplit, writableSplit);

    /// <summary>Waits for the next used element, which must be <paramref name="head"/> (commands complete in order).</summary>
    public AdminReply Complete(ushort head, int timeoutMs = 10_000)
    {
        var (written, len) = _chains.Complete(head, timeoutMs);
        int length = written.Length;
        ushort status = length >= 2 ? BinaryPrimitives.ReadUInt16LittleEndian(written) : (ushort)0xffff;
        ushort qualifier = length >= 4 ? BinaryPrimitives.ReadUInt16LittleEndian(written.AsSpan(2)) : (ushort)0xffff;
        const int s = AdminLayout.StatusSize;
        var result = len > s ? written.AsSpan(s, (int)Math.Min(len - s, (uint)(length - s))).ToArray() : [];
        return new AdminReply(status, qualifier, result, len);
    }
}
