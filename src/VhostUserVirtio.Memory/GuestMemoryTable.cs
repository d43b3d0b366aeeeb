using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Memory;

/// <summary>
/// The mutable memory table of one connection (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG), mapped under
/// a <see cref="MemoryPolicy"/>. Every change publishes a new <see cref="GuestMemory"/> snapshot and
/// returns the regions it retired; the caller disposes those only after every queue has switched to
/// the new snapshot.
/// </summary>
public sealed class GuestMemoryTable(MemoryPolicy? policy = null) : IDisposable
{
    /// <summary>
    /// Memory slots offered with CONFIGURE_MEM_SLOTS (GET_MAX_MEM_SLOTS), as libvhost-user and rust-vmm
    /// offer: guests with many DIMMs or virtio-mem need them. Translation stays a lookup whatever the
    /// count (<see cref="GuestMemory.TryTranslate"/>). Must never decrease: QEMU refuses a back end
    /// whose limit drops below what it validated before.
    /// </summary>
    public const int MaxSlots = 509;

    private readonly List<MemoryRegion> _regions = new();

    public MemoryPolicy Policy { get; } = policy ?? MemoryPolicy.Default;

    public GuestMemory Current { get; private set; } = GuestMemory.Empty;

    /// <summary>Address space the current regions take (what <see cref="MemoryPolicy.MaxMappedBytes"/> limits).</summary>
    public ulong MappedBytes => Sum(_regions);

    /// <summary>
    /// Replaces the whole table. Validates everything before mapping anything, so a bad table leaves
    /// the old one in place. Consumes the descriptors in every case.
    /// </summary>
    public IReadOnlyList<MemoryRegion> Replace(IReadOnlyList<(ulong Gpa, ulong Size, ulong UserAddress, ulong MmapOffset)> regions, IReadOnlyList<FileDescriptor> fds)
    {
        var mapped = new List<MemoryRegion>();
        try
        {
            // The new table replaces the old one, so only its own size counts against the limit.
            ulong total = 0;
            foreach (var r in regions)
                total = r.Size > ulong.MaxValue - total ? ulong.MaxValue : total + r.Size;
            CheckLimit(total, 0, "memory table");
            for (int i = 0; i < regions.Count; i++)
            {
                var (gpa, size, uva, off) = regions[i];
                CheckNoOverlap(gpa, size, uva, mapped, $"region {i}");
                mapped.Add(MemoryRegion.Map(gpa, size, uva, off, fds[i], Policy, Policy.MaxMappedBytes - Sum(mapped)));
            }
        }
        catch
        {
            foreach (var r in mapped)
                r.Dispose();
            for (int i = mapped.Count; i < fds.Count; i++)
                fds[i].Dispose();
            throw;
        }

        var retired = _regions.ToArray();
        _regions.Clear();
        _regions.AddRange(mapped);
        Publish();
        return retired;
    }

    /// <summary>Adds one region (ADD_MEM_REG) and returns it. Consumes the descriptor.</summary>
    public MemoryRegion Add(ulong gpa, ulong size, ulong userAddress, ulong mmapOffset, FileDescriptor fd)
    {
        ulong mappedBytes = MappedBytes;
        try
        {
            if (_regions.Count >= MaxSlots)
                throw new GuestMemoryException($"all {MaxSlots} memory slots are in use");
            CheckNoOverlap(gpa, size, userAddress, _regions, "new region");
            CheckLimit(size, mappedBytes, "new region");
        }
        catch
        {
            fd.Dispose();
            throw;
        }
        var region = MemoryRegion.Map(gpa, size, userAddress, mmapOffset, fd, Policy, Policy.MaxMappedBytes - mappedBytes);
        _regions.Add(region);
        Publish();
        return region;
    }

    /// <summary>Removes the region matching gpa, size and user address (REM_MEM_REG); returns it for retirement.</summary>
    public MemoryRegion Remove(ulong gpa, ulong size, ulong userAddress)
    {
        int i = _regions.FindIndex(r => r.Matches(gpa, size, userAddress));
        if (i < 0)
            throw new GuestMemoryException($"no region at gpa 0x{gpa:x} size 0x{size:x} uva 0x{userAddress:x}");
        var region = _regions[i];
        _regions.RemoveAt(i);
        Publish();
        return region;
    }

    /// <summary>Forgets every region; returns them for retirement.</summary>
    public IReadOnlyList<MemoryRegion> Clear()
    {
        var retired = _regions.ToArray();
        _regions.Clear();
        Publish();
        return retired;
    }

    private static void CheckNoOverlap(ulong gpa, ulong size, ulong uva, IEnumerable<MemoryRegion> existing, string what)
    {
        if (size == 0)
            throw new GuestMemoryException($"{what}: zero-sized region");
        if (gpa + size < gpa || uva + size < uva)
            throw new GuestMemoryException($"{what}: region end overflows 64 bits");
        foreach (var r in existing)
        {
            if (r.OverlapsGuest(gpa, size))
                throw new GuestMemoryException($"{what} (gpa 0x{gpa:x} size 0x{size:x}) overlaps {r} in guest physical space");
            if (r.OverlapsUser(uva, size))
                throw new GuestMemoryException($"{what} (uva 0x{uva:x} size 0x{size:x}) overlaps {r} in front-end address space");
        }
    }

    /// <summary>Refuses, before anything is mapped, <paramref name="size"/> more bytes that would not fit beside <paramref name="mapped"/>.</summary>
    private void CheckLimit(ulong size, ulong mapped, string what)
    {
        ulong limit = Policy.MaxMappedBytes;
        if (mapped > limit || size > limit - mapped)
            throw new GuestMemoryException(
                $"{what} of {Bytes.Format(size)} does not fit this connection's limit of {Bytes.Format(limit)} of mapped guest memory " +
                $"({(mapped > 0 ? Bytes.Format(mapped) + " already mapped; " : "")}memory policy)", GuestMemoryError.OverLimit);
    }

    private static ulong Sum(IEnumerable<MemoryRegion> regions)
    {
        ulong sum = 0;
        foreach (var r in regions)
            sum += r.MappedLength; // each was fitted into what the limit left, so no overflow
        return sum;
    }

    private void Publish() => Current = new GuestMemory(_regions.ToArray());

    public void Dispose()
    {
        foreach (var r in Clear())
            r.Dispose();
    }
}
