namespace VhostUserVirtio.Memory;

/// <summary>
/// What guest memory one front-end connection may hand this process. Applied by
/// <see cref="GuestMemoryTable"/> to every region before it is mapped.
/// </summary>
public sealed record MemoryPolicy
{
    /// <summary>
    /// 256 GiB: more than any guest we expect behind one virtio-net port, while every connection of
    /// the largest device group (owner + 256 VFs) at this limit still fits in half of x86_64's
    /// 128 TiB user address space. Mappings reserve no memory (MAP_NORESERVE), only addresses.
    /// </summary>
    public const ulong DefaultMaxMappedBytes = 256UL << 30;

    public static MemoryPolicy Default { get; } = new();

    /// <summary>
    /// Accept regions whose file cannot be sealed against shrinking (DPDK virtio-user's --no-huge
    /// memory, files that are not memfds). Only for trusted front ends: if such a front end
    /// truncates the file, the next access to it kills this process with SIGBUS, which .NET cannot
    /// contain. Each accepted unsealed region is logged as a warning.
    /// </summary>
    public bool AllowUnsealed { get; init; }

    /// <summary>
    /// Most bytes of address space the regions of one connection's table may map together (a
    /// replaced table is unmapped once the new one is in use, so briefly there may be twice this).
    /// </summary>
    public ulong MaxMappedBytes { get; init; } = DefaultMaxMappedBytes;
}
