using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Memory;

/// <summary>
/// One guest memory region, mapped into this process. Mapped from file offset 0 for
/// mmap_offset + size bytes (mmap_offset need not be page aligned), so the region's first byte is at
/// base + mmap_offset. Disposed (unmapped) only by the <see cref="GuestMemoryTable"/> that owns it.
/// </summary>
public sealed unsafe class MemoryRegion : IDisposable
{
    private readonly MemoryMapping _mapping;

    private MemoryRegion(ulong gpa, ulong size, ulong userAddress, ulong mmapOffset, MemoryMapping mapping, bool sealedAgainstShrink)
    {
        GuestPhysicalAddress = gpa;
        Size = size;
        UserAddress = userAddress;
        MmapOffset = mmapOffset;
        _mapping = mapping;
        HostBase = (byte*)mapping.Address + mmapOffset;
        SealedAgainstShrink = sealedAgainstShrink;
    }

    public ulong GuestPhysicalAddress { get; }
    public ulong Size { get; }
    /// <summary>The front end's own virtual address of the region (ring addresses are given in these).</summary>
    public ulong UserAddress { get; }
    public ulong MmapOffset { get; }
    public ulong GuestEnd => GuestPhysicalAddress + Size;
    public ulong UserEnd => UserAddress + Size;
    internal byte* HostBase { get; }
    /// <summary>False when the file could not be sealed against shrinking (a shrink would fault our accesses).</summary>
    public bool SealedAgainstShrink { get; }

    /// <summary>
    /// Validates and maps a region. The descriptor is consumed (closed once mapped, or on failure):
    /// the mapping keeps the memory alive on its own.
    /// </summary>
    public static MemoryRegion Map(ulong gpa, ulong size, ulong userAddress, ulong mmapOffset, FileDescriptor fd)
    {
        using (fd)
        {
            if (size == 0)
                throw new GuestMemoryException("zero-sized region");
            if (gpa + size < gpa || userAddress + size < userAddress || mmapOffset + size < mmapOffset)
                throw new GuestMemoryException("region end overflows 64 bits");
            ulong mapLength = mmapOffset + size;
            long fileSize = fd.GetFileSize();
            if (fileSize >= 0 && (ulong)fileSize < mapLength)
                throw new GuestMemoryException(
                    $"region needs {mapLength} bytes of its file but the file has {fileSize} (accesses past the end would fault)");
            bool sealedShrink = fd.TrySealAgainstShrink();
            var mapping = MemoryMapping.Map(fd, mapLength);
            return new MemoryRegion(gpa, size, userAddress, mmapOffset, mapping, sealedShrink);
        }
    }

    public bool ContainsGuest(ulong gpa) => gpa >= GuestPhysicalAddress && gpa - GuestPhysicalAddress < Size;

    public bool ContainsUser(ulong uva) => uva >= UserAddress && uva - UserAddress < Size;

    public bool OverlapsGuest(ulong gpa, ulong size) => gpa < GuestEnd && GuestPhysicalAddress < gpa + size;

    public bool OverlapsUser(ulong uva, ulong size) => uva < UserEnd && UserAddress < uva + size;

    public bool Matches(ulong gpa, ulong size, ulong userAddress) =>
        gpa == GuestPhysicalAddress && size == Size && userAddress == UserAddress;

    public override string ToString() =>
        $"gpa 0x{GuestPhysicalAddress:x}..0x{GuestEnd:x} uva 0x{UserAddress:x} offset 0x{MmapOffset:x}";

    public void Dispose() => _mapping.Dispose();
}

/// <summary>A memory region or address the front end described that cannot be used.</summary>
public sealed class GuestMemoryException(string message) : Exception(message);
