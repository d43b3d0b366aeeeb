using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend.Sessions;

/// <summary>
/// What a device's vhost-user session consists of, as the front end set it up: negotiation, memory
/// table, and each ring's configuration with its descriptors. Enough to rebuild the session in a
/// restarted process (<see cref="VhostUserBackend.RestoreSession"/>) without the front end noticing.
/// Descriptors are the live objects of the session; <see cref="SessionRecord"/> stores them by id.
/// </summary>
public sealed record SessionState
{
    public ulong Features { get; init; }
    public bool FeaturesSet { get; init; }
    public ProtocolFeatures Protocol { get; init; }
    public bool Owned { get; init; }
    public byte Status { get; init; }
    public IReadOnlyList<KeptRegion> Regions { get; init; } = [];
    public IReadOnlyList<KeptQueue> Queues { get; init; } = [];
    /// <summary>The inflight buffer the rings record into (the front end's, or one made for keeping the session), or null.</summary>
    public KeptInflight? Inflight { get; init; }
    /// <summary>Why this session cannot be carried across a restart (the connection is then dropped and the front end starts over), or null.</summary>
    public string? NotResumable { get; init; }

    /// <summary>Every descriptor the session holds, each once.</summary>
    public IEnumerable<FileDescriptor> Descriptors()
    {
        foreach (var r in Regions)
            yield return r.Descriptor;
        if (Inflight != null)
            yield return Inflight.Descriptor;
        foreach (var q in Queues)
        {
            if (q.Kick != null) yield return q.Kick;
            if (q.Call != null) yield return q.Call;
            if (q.Err != null) yield return q.Err;
        }
    }
}

/// <summary>One memory-table entry and the file it maps.</summary>
public sealed record KeptRegion(ulong GuestAddress, ulong Size, ulong UserAddress, ulong MmapOffset, FileDescriptor Descriptor);

/// <summary>
/// One ring as the front end configured it. <see cref="Running"/>: it was started, so where it
/// resumes comes from the ring itself; otherwise <see cref="Base"/> is what the front end set or last read.
/// </summary>
public sealed record KeptQueue(int Index, int Size, uint Base, bool Running, bool Enabled,
    (ulong Desc, ulong Avail, ulong Used)? Addresses, ulong? LogAddress, FileDescriptor? Kick, FileDescriptor? Call, FileDescriptor? Err);

/// <summary>An inflight buffer's file and geometry (GET/SET_INFLIGHT_FD's payload).</summary>
public sealed record KeptInflight(ulong Size, ulong Offset, int Queues, int QueueSize, FileDescriptor Descriptor);
