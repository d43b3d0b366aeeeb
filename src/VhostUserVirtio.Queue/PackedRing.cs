namespace VhostUserVirtio.Queue;

/// <summary>
/// Packed virtqueue layout (VIRTIO 1.x 2.8): the numbers both the device side and the driver side
/// use. One ring of 16-byte descriptors {addr u64, len u32, id u16, flags u16} that both sides write,
/// plus two 4-byte event suppression structures {off_wrap u16, flags u16}: the driver area (written
/// by the driver, read by the device) and the device area (the other way round). Little-endian.
/// </summary>
public static class PackedRing
{
    public const int DescriptorSize = 16;
    public const int IdOffset = 12;
    public const int FlagsOffset = 14;

    /// <summary>Descriptor flags: the split ring's three, plus the two wrap bits.</summary>
    public const ushort DescNext = 1;
    public const ushort DescWrite = 2;
    public const ushort DescIndirect = 4;
    public const ushort DescAvail = 1 << 7;
    public const ushort DescUsed = 1 << 15;

    /// <summary>Event suppression flags (the structure's second field).</summary>
    public const ushort EventEnable = 0;
    public const ushort EventDisable = 1;
    /// <summary>Notify at the descriptor named by off_wrap (only with VIRTIO_F_RING_EVENT_IDX).</summary>
    public const ushort EventDesc = 2;
    public const int EventSuppressionSize = 4;
    public const int EventFlagsOffset = 2;

    public const int DescriptorAlignment = 16;
    public const int EventAlignment = 4;
    /// <summary>Largest queue size of a packed ring (indices are 15 bits, the 16th is the wrap counter).</summary>
    public const int MaxQueueSize = 32768;
    /// <summary>Bit 15 of an index word (off_wrap, a ring base half) carries the wrap counter.</summary>
    public const ushort WrapBit = 0x8000;

    public static ulong DescriptorTableSize(int size) => (ulong)(DescriptorSize * size);

    public static bool IsValidSize(int size) => size > 0 && size <= MaxQueueSize;

    /// <summary>The flags a driver sets to make a descriptor available in the lap of <paramref name="wrap"/>: AVAIL = wrap, USED = !wrap.</summary>
    public static ushort AvailableFlags(bool wrap) => wrap ? DescAvail : DescUsed;

    /// <summary>The flags a device sets to mark a descriptor used in the lap of <paramref name="wrap"/>: AVAIL = USED = wrap.</summary>
    public static ushort UsedFlags(bool wrap) => wrap ? (ushort)(DescAvail | DescUsed) : (ushort)0;

    /// <summary>Whether a descriptor is available to the device whose avail wrap counter is <paramref name="wrap"/>.</summary>
    public static bool IsAvailable(ushort flags, bool wrap) =>
        ((flags & DescAvail) != 0) == wrap && ((flags & DescUsed) != 0) != wrap;

    /// <summary>Whether a descriptor was used by the device in the lap of <paramref name="wrap"/> (what a driver checks).</summary>
    public static bool IsUsed(ushort flags, bool wrap) =>
        ((flags & DescAvail) != 0) == wrap && ((flags & DescUsed) != 0) == wrap;

    /// <summary>One half of a ring base or an off_wrap word: the slot in bits 0-14, the wrap counter in bit 15.</summary>
    public static ushort Pack(ushort slot, bool wrap) => (ushort)(slot | (wrap ? WrapBit : 0));

    /// <summary>
    /// vring_need_event for the packed ring (what Linux's virtio driver and DPDK's vhost compute): has
    /// the index moved past <paramref name="offWrap"/> since <paramref name="oldIndex"/>? The event
    /// offset is taken back one lap when its wrap counter is not the current one.
    /// </summary>
    public static bool NeedEvent(ushort offWrap, ushort newIndex, bool newWrap, ushort oldIndex, int size)
    {
        int off = offWrap & ~WrapBit;
        int old = oldIndex;
        if (newIndex <= old)
            old -= size;
        if (((offWrap & WrapBit) != 0) != newWrap)
            off -= size;
        return (ushort)(newIndex - off - 1) < (ushort)(newIndex - old);
    }
}

/// <summary>Checks a packed ring's placement: size, alignment, each part inside one mapped region.</summary>
internal static class PackedPlacement
{
    public static RingError? Check(RingPlacement placement, Memory.GuestMemory memory)
    {
        int size = placement.Size;
        if (!PackedRing.IsValidSize(size))
            return new(RingErrorKind.InvalidSize, $"queue size {size} is not in 1..{PackedRing.MaxQueueSize}");
        if (placement.Descriptors % PackedRing.DescriptorAlignment != 0 || placement.Available % PackedRing.EventAlignment != 0 ||
            placement.Used % PackedRing.EventAlignment != 0)
            return new(RingErrorKind.MisalignedRing,
                $"misaligned packed ring (desc 0x{placement.Descriptors:x}, driver area 0x{placement.Available:x}, device area 0x{placement.Used:x})");
        if (!memory.TryGetSpan(placement.Descriptors, (int)PackedRing.DescriptorTableSize(size), out _) ||
            !memory.TryGetSpan(placement.Available, PackedRing.EventSuppressionSize, out _) ||
            !memory.TryGetSpan(placement.Used, PackedRing.EventSuppressionSize, out _))
            return new(RingErrorKind.RingOutsideMemory,
                $"packed ring outside mapped memory (desc 0x{placement.Descriptors:x}, driver area 0x{placement.Available:x}, device area 0x{placement.Used:x}, size {size})");
        return null;
    }
}
