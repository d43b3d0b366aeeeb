using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Memory;

/// <summary>
/// One guest memory region, mapped into this process. Only the region's own pages are mapped: from
/// mmap_offset rounded down to the mapping granule, so a region far into a large sparse file costs
/// its size in address space, not its offset; the region's first byte is at that mapping plus the
/// rounding. Disposed (unmapped) only by the <see cref="GuestMemoryTable"/> that owns it.
/// </summary>
public sealed unsafe class MemoryRegion : IDisposable
{
    /// <summary>Largest mapping granule taken from st_blksize: x86_64's largest huge page.</summary>
    private const ulong MaxGranule = 1UL << 30;

    private readonly MemoryMapping _mapping;
    // A slice shares its parent's mapping and never unmaps it: the parent's owner retires it.
    private readonly bool _ownsMapping = true;

    private MemoryRegion(ulong gpa, ulong size, ulong userAddress, ulong mmapOffset, MemoryMapping mapping, ulong lead, string? unsealedReason, FileDescriptor fd)
    {
        Descriptor = fd;
        GuestPhysicalAddress = gpa;
        Size = size;
        UserAddress = userAddress;
        MmapOffset = mmapOffset;
        _mapping = mapping;
        HostBase = (byte*)mapping.Address + lead;
        UnsealedReason = unsealedReason;
    }

    private MemoryRegion(MemoryRegion parent, ulong gpa, ulong size)
    {
        ulong skip = gpa - parent.GuestPhysicalAddress;
        GuestPhysicalAddress = gpa;
        Size = size;
        UserAddress = parent.UserAddress + skip;
        MmapOffset = parent.MmapOffset + skip;
        _mapping = parent._mapping;
        _ownsMapping = false;
        Descriptor = parent.Descriptor;
        HostBase = parent.HostBase + skip;
        UnsealedReason = parent.UnsealedReason;
    }

    /// <summary>
    /// The part of this region inside [gpa, gpa+size), at the same guest addresses, or null if they do
    /// not overlap. It lives only as long as this region is mapped (see <see cref="GuestMemory.Window"/>).
    /// </summary>
    internal MemoryRegion? Slice(ulong gpa, ulong size)
    {
        ulong start = Math.Max(gpa, GuestPhysicalAddress);
        ulong end = Math.Min(gpa + size, GuestEnd);
        return start < end ? new MemoryRegion(this, start, end - start) : null;
    }

    public ulong GuestPhysicalAddress { get; }
    public ulong Size { get; }
    /// <summary>The front end's own virtual address of the region (ring addresses are given in these).</summary>
    public ulong UserAddress { get; }
    public ulong MmapOffset { get; }
    public ulong GuestEnd => GuestPhysicalAddress + Size;
    public ulong UserEnd => UserAddress + Size;
    internal byte* HostBase { get; }
    /// <summary>Bytes of address space the mapping takes: the region plus its rounding to the granule.</summary>
    public ulong MappedLength => _mapping.Length;
    /// <summary>
    /// False only when the policy allowed a file that cannot be sealed against shrinking: a front
    /// end that truncates it would fault our accesses.
    /// </summary>
    public bool SealedAgainstShrink => UnsealedReason == null;
    /// <summary>Why the file could not be sealed, when it could not.</summary>
    public string? UnsealedReason { get; }
    /// <summary>
    /// The region's file, kept open while it is mapped so the region can be described to another
    /// process (a session keeper that holds it across a restart); owned by the region that mapped it.
    /// </summary>
    public FileDescriptor Descriptor { get; }

    /// <summary>
    /// Validates and maps a region under <paramref name="policy"/>, taking at most
    /// <paramref name="budget"/> bytes of address space. The descriptor is consumed: kept by the region
    /// (<see cref="Descriptor"/>), or closed on failure.
    /// </summary>
    public static MemoryRegion Map(ulong gpa, ulong size, ulong userAddress, ulong mmapOffset, FileDescriptor fd, MemoryPolicy policy, ulong budget)
    {
        bool mapped = false;
        try
        {
            if (size == 0)
                throw new GuestMemoryException("zero-sized region");
            if (gpa + size < gpa || userAddress + size < userAddress || mmapOffset + size < mmapOffset)
                throw new GuestMemoryException("region end overflows 64 bits");
            ulong fileEnd = mmapOffset + size;

            // Seal first, then read the size: a sealed file can only grow, so the size read below
            // holds for as long as the mapping lives. Read before sealing, a front end could shrink
            // the file between the two and fault us later.
            bool sealedShrink = fd.TrySealAgainstShrink(out string? unsealable);
            if (!sealedShrink && !policy.AllowUnsealed)
                throw new GuestMemoryException(
                    $"region cannot be sealed against shrinking: {unsealable}; the memory policy accepts only sealable memory, " +
                    "since a front end that truncated an unsealed file would crash this process (QEMU's memory-backend-memfd seals by default)",
                    GuestMemoryError.Unsealable);

            var file = fd.GetStatus();
            if (file.Size < 0 || (ulong)file.Size < fileEnd)
                throw new GuestMemoryException(
                    $"region needs {fileEnd} bytes of its file but the file has {file.Size} (accesses past the end would fault)",
                    GuestMemoryError.FileTooSmall);

            var (offset, lead, length) = Layout(mmapOffset, size, Granule(file.BlockSize));
            if (length > budget)
                throw new GuestMemoryException(
                    $"region would map {Bytes.Format(length)}, more than the {Bytes.Format(budget)} left of this connection's " +
                    $"limit of {Bytes.Format(policy.MaxMappedBytes)} (memory policy)", GuestMemoryError.OverLimit);

            MemoryMapping mapping;
            try
            {
                mapping = MemoryMapping.Map(fd, length, offset);
            }
            catch (NativeException e)
            {
                throw new GuestMemoryException($"cannot map {Bytes.Format(length)} at file offset 0x{offset:x}: {e.Message}", GuestMemoryError.MapFailed);
            }
            mapped = true;
            return new MemoryRegion(gpa, size, userAddress, mmapOffset, mapping, lead, unsealable, fd);
        }
        finally
        {
            if (!mapped)
                fd.Dispose();
        }
    }

    /// <summary>
    /// The mapping granule: the page size, or st_blksize when that is a larger power of two (a
    /// hugetlbfs file must be mapped at huge page boundaries, and its st_blksize is that size).
    /// </summary>
    private static ulong Granule(long blockSize)
    {
        ulong page = (ulong)Environment.SystemPageSize;
        ulong block = blockSize > 0 ? (ulong)blockSize : 0;
        return block > page && block <= MaxGranule && ulong.IsPow2(block) ? block : page;
    }

    /// <summary>
    /// Where to map a region: file offset rounded down to the granule, the region's distance from
    /// there (lead), and the length rounded up to the granule (hugetlbfs unmaps only whole pages).
    /// </summary>
    private static (ulong Offset, ulong Lead, ulong Length) Layout(ulong mmapOffset, ulong size, ulong granule)
    {
        ulong offset = mmapOffset & ~(granule - 1);
        ulong lead = mmapOffset - offset;
        if (size > ulong.MaxValue - lead - (granule - 1))
            throw new GuestMemoryException("region end overflows 64 bits once aligned to the mapping granule");
        ulong length = (lead + size + granule - 1) & ~(granule - 1);
        if (offset > long.MaxValue)
            throw new GuestMemoryException($"file offset 0x{mmapOffset:x} is beyond what mmap accepts");
        return (offset, lead, length);
    }

    public bool ContainsGuest(ulong gpa) => gpa >= GuestPhysicalAddress && gpa - GuestPhysicalAddress < Size;

    public bool ContainsUser(ulong uva) => uva >= UserAddress && uva - UserAddress < Size;

    public bool OverlapsGuest(ulong gpa, ulong size) => gpa < GuestEnd && GuestPhysicalAddress < gpa + size;

    public bool OverlapsUser(ulong uva, ulong size) => uva < UserEnd && UserAddress < uva + size;

    public bool Matches(ulong gpa, ulong size, ulong userAddress) =>
        gpa == GuestPhysicalAddress && size == Size && userAddress == UserAddress;

    public override string ToString() =>
        $"gpa 0x{GuestPhysicalAddress:x}..0x{GuestEnd:x} uva 0x{UserAddress:x} offset 0x{MmapOffset:x}";

    public void Dispose()
    {
        if (!_ownsMapping)
            return;
        _mapping.Dispose();
        Descriptor.Dispose();
    }
}

/// <summary>Why a region was refused, for callers and tests that need more than the message.</summary>
public enum GuestMemoryError
{
    /// <summary>The description itself is wrong: zero size, overflow, overlap, no such region, no free slot.</summary>
    Invalid,
    /// <summary>The file cannot be sealed against shrinking and the policy wants sealed memory.</summary>
    Unsealable,
    /// <summary>The file is shorter than the region needs.</summary>
    FileTooSmall,
    /// <summary>The connection's table would map more than the policy allows.</summary>
    OverLimit,
    /// <summary>mmap refused (e.g. out of address space, or an offset the file system cannot map).</summary>
    MapFailed,
}

/// <summary>A memory region or address the front end described that cannot be used.</summary>
public sealed class GuestMemoryException(string message, GuestMemoryError kind = GuestMemoryError.Invalid) : Exception(message)
{
    public GuestMemoryError Kind { get; } = kind;
}

/// <summary>Byte counts for people: "256 GiB", "1.5 MiB", "4096 bytes".</summary>
internal static class Bytes
{
    public static string Format(ulong bytes)
    {
        string[] units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if (bytes < 1024)
            return $"{bytes} bytes";
        double value = bytes;
        int unit = -1;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        return $"{value:0.##} {units[unit]}";
    }
}
