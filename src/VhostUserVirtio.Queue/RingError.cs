namespace VhostUserVirtio.Queue;

/// <summary>What a guest (or a ring set-up) did wrong, as a kind callers and tests can match.</summary>
public enum RingErrorKind
{
    /// <summary>Queue size not a power of two in range.</summary>
    InvalidSize,
    /// <summary>A ring part is not aligned as the split layout requires.</summary>
    MisalignedRing,
    /// <summary>A ring part is not inside one mapped region (or its address is not in the memory table).</summary>
    RingOutsideMemory,
    /// <summary>The driver moved the avail index further than the queue size.</summary>
    AvailIndexOutOfRange,
    /// <summary>An avail entry names a head at or above the queue size.</summary>
    HeadOutOfRange,
    /// <summary>A descriptor's next index is at or above its table size.</summary>
    NextOutOfRange,
    /// <summary>The chain uses more descriptors than its table has: a loop, or simply too long.</summary>
    ChainTooLong,
    /// <summary>The readable or writable part of a chain adds up to more than 4 GiB.</summary>
    ChainTooLarge,
    /// <summary>A readable descriptor follows a writable one.</summary>
    ReadableAfterWritable,
    /// <summary>A buffer lies (partly) outside guest memory.</summary>
    BufferOutsideMemory,
    /// <summary>Indirect descriptor used without VIRTIO_F_INDIRECT_DESC.</summary>
    IndirectNotNegotiated,
    /// <summary>An indirect descriptor inside an indirect table.</summary>
    NestedIndirect,
    /// <summary>An indirect descriptor with NEXT set.</summary>
    IndirectWithNext,
    /// <summary>An indirect table whose length is zero, not a multiple of 16 or larger than the queue.</summary>
    IndirectTableLength,
    /// <summary>An indirect table not inside one mapped region.</summary>
    IndirectTableOutsideMemory,
    /// <summary>The device side could not set the ring up (e.g. its doorbell could not be watched).</summary>
    SetupFailed,
    /// <summary>Packed ring: a chain names a buffer id at or above the queue size.</summary>
    BufferIdOutOfRange,
    /// <summary>Packed ring: a chain names a buffer id that is already in flight (taken, not yet used).</summary>
    BufferIdInFlight,
    /// <summary>Packed ring: the driver made more descriptors available than the ring holds (it reused slots the device had not given back).</summary>
    RingOverrun,
    /// <summary>The inflight region a ring resumes from is inconsistent (version, size, heads, flags or counters).</summary>
    InflightRegionCorrupt,
}

/// <summary>
/// Why a ring is broken: a kind to match on and the detail for the log (as rust-vmm's virtio-queue
/// <c>Error</c> does). <see cref="ToString"/> is the detail, so log lines read as before.
/// </summary>
public readonly record struct RingError(RingErrorKind Kind, string Detail)
{
    public override string ToString() => Detail;
}
