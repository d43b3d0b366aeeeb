namespace VhostUserVirtio.Queue;

/// <summary>
/// Split virtqueue layout (VIRTIO 1.x 2.7): the numbers both the device side and the driver side use.
/// All ring fields are little-endian.
/// </summary>
public static class SplitRing
{
    public const int DescriptorSize = 16;
    /// <summary>virtq_desc.flags</summary>
    public const ushort DescNext = 1;
    public const ushort DescWrite = 2;
    public const ushort DescIndirect = 4;
    /// <summary>virtq_avail.flags: driver asks for no used-buffer notifications.</summary>
    public const ushort AvailNoInterrupt = 1;
    /// <summary>virtq_used.flags: device asks for no available-buffer notifications.</summary>
    public const ushort UsedNoNotify = 1;
    /// <summary>Largest queue size of a split ring.</summary>
    public const int MaxQueueSize = 32768;

    public const int DescriptorAlignment = 16;
    public const int AvailableAlignment = 2;
    public const int UsedAlignment = 4;
    public const int UsedElementSize = 8;

    public static ulong DescriptorTableSize(int size) => (ulong)(DescriptorSize * size);
    /// <summary>flags, idx, ring[size], used_event.</summary>
    public static ulong AvailableRingSize(int size) => (ulong)(6 + 2 * size);
    /// <summary>flags, idx, ring[size] of {id, len}, avail_event.</summary>
    public static ulong UsedRingSize(int size) => (ulong)(6 + UsedElementSize * size);

    /// <summary>Legacy (transitional) ring alignment and queue-address unit: rings are placed by page frame number.</summary>
    public const int LegacyAlignment = 4096;
    public const int LegacyAddressShift = 12;

    /// <summary>
    /// The legacy interface's fixed layout (VIRTIO 1.x 2.7 "Legacy Interfaces: Virtqueue Layout"): the
    /// descriptor table at the queue address, the avail ring right after it, the used ring at the next
    /// 4096-byte boundary. Returns the avail and used offsets from the descriptor table and the total size.
    /// </summary>
    public static (ulong AvailOffset, ulong UsedOffset, ulong TotalSize) LegacyLayout(int size)
    {
        ulong avail = DescriptorTableSize(size);
        ulong used = AlignUp(avail + AvailableRingSize(size), LegacyAlignment);
        return (avail, used, used + AlignUp(UsedRingSize(size), LegacyAlignment));
    }

    private static ulong AlignUp(ulong value, ulong alignment) => (value + alignment - 1) & ~(alignment - 1);

    public static bool IsValidSize(int size) => size > 0 && size <= MaxQueueSize && (size & (size - 1)) == 0;

    /// <summary>vring_need_event: has the used index passed the driver's used_event since the last notification?</summary>
    public static bool NeedEvent(ushort eventIndex, ushort newIndex, ushort oldIndex) =>
        (ushort)(newIndex - eventIndex - 1) < (ushort)(newIndex - oldIndex);
}

/// <summary>
/// Where a split ring lies in guest physical memory, and its size: what a driver tells the device
/// (SET_VRING_NUM/ADDR translated, a legacy queue PFN, or a transport's queue set-up).
/// </summary>
public readonly record struct RingPlacement(int Size, ulong Descriptors, ulong Available, ulong Used)
{
    /// <summary>
    /// Why the ring cannot lie there (size, alignment, each part inside one mapped region), or null.
    /// Touches no ring: callers check before stopping a ring that is running.
    /// </summary>
    public RingError? Check(Memory.GuestMemory memory)
    {
        if (!SplitRing.IsValidSize(Size))
            return new(RingErrorKind.InvalidSize, $"queue size {Size} is not a power of two in 1..{SplitRing.MaxQueueSize}");
        if (Descriptors % SplitRing.DescriptorAlignment != 0 || Available % SplitRing.AvailableAlignment != 0 || Used % SplitRing.UsedAlignment != 0)
            return new(RingErrorKind.MisalignedRing, $"misaligned ring (desc 0x{Descriptors:x}, avail 0x{Available:x}, used 0x{Used:x})");
        if (!memory.TryGetSpan(Descriptors, (int)SplitRing.DescriptorTableSize(Size), out _) ||
            !memory.TryGetSpan(Available, (int)SplitRing.AvailableRingSize(Size), out _) ||
            !memory.TryGetSpan(Used, (int)SplitRing.UsedRingSize(Size), out _))
            return new(RingErrorKind.RingOutsideMemory,
                $"ring outside mapped memory (desc 0x{Descriptors:x}, avail 0x{Available:x}, used 0x{Used:x}, size {Size})");
        return null;
    }

    public override string ToString() => $"size {Size}, desc 0x{Descriptors:x}, avail 0x{Available:x}, used 0x{Used:x}";
}
