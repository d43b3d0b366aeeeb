using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Queue;

/// <summary>
/// vhost-user's inflight buffer (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, "Inflight I/O tracking"): a
/// shared memory file that outlives the back end, with one <see cref="InflightQueueRegion"/> per
/// queue recording which chains the device took and has not given back. A back end that restarts
/// (crash, upgrade) gets the same file again (SET_INFLIGHT_FD) and resubmits those chains, so the
/// driver loses none. The layout is the split ring's (<see cref="InflightLayout"/>); its content
/// comes from whoever handed the file over and is distrusted when a ring resumes from it.
/// Disposed (unmapped) by its owner only once no ring can still write into it.
/// </summary>
public sealed class InflightRegion : IDisposable
{
    private readonly MemoryMapping _mapping;
    private readonly InflightQueueRegion?[] _queues;
    private readonly nint _start;

    private InflightRegion(FileDescriptor fd, MemoryMapping mapping, nint start, ulong size, ulong offset, int queues, int queueSize)
    {
        Offset = offset;
        Descriptor = fd;
        _mapping = mapping;
        _start = start;
        Size = size;
        QueueCount = queues;
        QueueSize = queueSize;
        _queues = new InflightQueueRegion?[queues];
    }

    /// <summary>The file, kept open: a GET_INFLIGHT_FD reply hands out a duplicate, a keeper may hold it across restarts.</summary>
    public FileDescriptor Descriptor { get; }
    /// <summary>Where the buffer starts in its file (mmap_offset).</summary>
    public ulong Offset { get; }
    /// <summary>Bytes of the buffer (mmap_size).</summary>
    public ulong Size { get; }
    public int QueueCount { get; }
    /// <summary>Descriptors each queue's region has room for (queue_size).</summary>
    public int QueueSize { get; }

    /// <summary>
    /// A new zeroed buffer for <paramref name="queues"/> queues of up to <paramref name="queueSize"/>
    /// descriptors, in a memfd sealed against shrinking and growing (libvhost-user seals it the same
    /// way), mapped shared.
    /// </summary>
    public static InflightRegion Create(int queues, int queueSize)
    {
        if (InflightLayout.Problem(queues, queueSize) is { } problem)
            throw new ArgumentOutOfRangeException(nameof(queueSize), problem);
        ulong size = InflightLayout.BufferSize(queues, queueSize);
        var fd = MemFd.Create("vhost-inflight", (long)size);
        try
        {
            if (!fd.TrySealAgainstShrink(out string? unsealable))
                throw new InvalidOperationException($"a fresh memfd cannot be sealed: {unsealable}");
            var mapping = MemoryMapping.Map(fd, size);
            return new InflightRegion(fd, mapping, mapping.Address, size, 0, queues, queueSize); // a new memfd reads as zeros
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Maps a buffer handed over by a front end (SET_INFLIGHT_FD) or kept across a restart. Checks
    /// the geometry against the device's limits and the file's real size before mapping, so a lying
    /// front end gets a <see cref="GuestMemoryException"/>, never a mapping too short for what it
    /// claims. Takes the descriptor (closed on failure). The regions' content is checked only when a
    /// ring resumes from it (<see cref="SplitQueue.AttachInflight"/>).
    /// </summary>
    /// <param name="maxQueues">The device's queue count: a buffer for more queues is refused (DPDK 6442c329b9).</param>
    /// <param name="maxQueueSize">The device's largest ring.</param>
    /// <param name="allowUnsealed">Accept a file that cannot be sealed against shrinking (a shrink under the mapping would turn writes into SIGBUS).</param>
    public static InflightRegion Open(FileDescriptor fd, ulong size, ulong offset, int queues, int queueSize,
        int maxQueues = ushort.MaxValue, int maxQueueSize = InflightLayout.MaxQueueSize, bool allowUnsealed = false)
    {
        try
        {
            if (InflightLayout.Problem(queues, queueSize) is { } problem)
                throw new GuestMemoryException($"inflight buffer refused: {problem}");
            if (queues > maxQueues)
                throw new GuestMemoryException($"inflight buffer for {queues} queues, the device has {maxQueues}");
            if (queueSize > maxQueueSize)
                throw new GuestMemoryException($"inflight buffer for queues of {queueSize} descriptors, the device allows {maxQueueSize}");
            ulong needed = InflightLayout.BufferSize(queues, queueSize);
            if (size < needed)
                throw new GuestMemoryException($"inflight buffer of {size} bytes, {queues} queues of {queueSize} need {needed}");
            // Only the regions are ever touched: a larger claim maps no more than they need.
            if (offset > long.MaxValue - needed)
                throw new GuestMemoryException($"inflight buffer offset 0x{offset:x} + size 0x{needed:x} is beyond what a file can hold");
            if (!fd.TrySealAgainstShrink(out string? unsealable) && !allowUnsealed)
                throw new GuestMemoryException($"inflight buffer cannot be sealed against shrinking: {unsealable}", GuestMemoryError.Unsealable);
            long fileSize = fd.GetFileSize();
            if (fileSize < 0 || (ulong)fileSize < offset + needed)
                throw new GuestMemoryException($"inflight buffer needs {offset + needed} bytes of its file but the file has {fileSize}", GuestMemoryError.FileTooSmall);
            ulong page = (ulong)Environment.SystemPageSize;
            ulong mapOffset = offset & ~(page - 1);
            ulong lead = offset - mapOffset;
            MemoryMapping mapping;
            try
            {
                mapping = MemoryMapping.Map(fd, lead + needed, mapOffset);
            }
            catch (NativeException e)
            {
                throw new GuestMemoryException($"cannot map the inflight buffer ({needed} bytes at file offset 0x{offset:x}): {e.Message}", GuestMemoryError.MapFailed);
            }
            return new InflightRegion(fd, mapping, mapping.Address + (nint)lead, needed, offset, queues, queueSize);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>The region of queue <paramref name="index"/> (the same object every time).</summary>
    public unsafe InflightQueueRegion QueueRegion(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, QueueCount);
        return _queues[index] ??= new InflightQueueRegion(this,
            (byte*)_start + (long)InflightLayout.QueueRegionSize(QueueSize) * index, QueueSize);
    }

    public void Dispose()
    {
        _mapping.Dispose();
        Descriptor.Dispose();
    }
}

/// <summary>
/// The per-queue layout of the inflight buffer for split rings (vhost-user.rst QueueRegionSplit,
/// DescStateSplit): a 16-byte header (u64 features; u16 version; u16 desc_num; u16 last_batch_head;
/// u16 used_idx) then 16 bytes per descriptor (u8 inflight; u8 padding[5]; u16 next; u64 counter).
/// Each queue's region is rounded up to 64 bytes, as libvhost-user and QEMU size it, so buffers
/// made by either are read the same way here.
/// </summary>
public static class InflightLayout
{
    public const int HeaderSize = 16;
    public const int DescStateSize = 16;
    public const int Alignment = 64;
    /// <summary>The only layout version defined.</summary>
    public const ushort Version = 1;
    /// <summary>VIRTQUEUE_MAX_SIZE: no ring is larger.</summary>
    public const int MaxQueueSize = 32768;

    // Header offsets.
    internal const int Features = 0, VersionField = 8, DescNum = 10, LastBatchHead = 12, UsedIdx = 14;
    // Descriptor-state offsets.
    internal const int Inflight = 0, Next = 6, Counter = 8;
    /// <summary>
    /// The first padding byte of a descriptor's state, which this back end sets once the chain's used
    /// element is written (its work is done) and clears with the in-flight flag when the element is
    /// published: so after a restart, done work is published rather than done again. A front end
    /// never reads it (the spec leaves the padding to the back end).
    /// </summary>
    internal const int Completed = 1;

    /// <summary>Bytes of one queue's region.</summary>
    public static ulong QueueRegionSize(int queueSize) =>
        ((ulong)HeaderSize + (ulong)DescStateSize * (ulong)queueSize + Alignment - 1) & ~(ulong)(Alignment - 1);

    /// <summary>Bytes of a buffer for <paramref name="queues"/> queues (mmap_size).</summary>
    public static ulong BufferSize(int queues, int queueSize) => QueueRegionSize(queueSize) * (ulong)queues;

    /// <summary>Why a geometry is impossible, or null.</summary>
    public static string? Problem(int queues, int queueSize) =>
        queues < 1 ? $"{queues} queues" :
        queues > ushort.MaxValue ? $"{queues} queues do not fit the u16 field" :
        queueSize < 1 || queueSize > MaxQueueSize ? $"queue size {queueSize} is not within 1..{MaxQueueSize}" : null;
}
