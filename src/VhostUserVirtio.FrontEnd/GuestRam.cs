using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.FrontEnd;

/// <summary>
/// Driver-side "guest RAM": one or more memfd-backed regions mapped into this process, described to
/// the back end as a memory table. Offers a bump allocator for rings and buffers and direct access
/// by guest physical address, like a VMM that owns the guest's memory.
/// </summary>
public sealed unsafe class GuestRam : IDisposable
{
    /// <summary>Where this process pretends its mappings live (the "QEMU virtual address" of each region).</summary>
    public const ulong UserAddressBase = 0x7f00_0000_0000;

    private readonly List<RamRegion> _regions = new();
    private ulong _next;

    /// <summary>A single region of <paramref name="size"/> bytes at guest physical address <paramref name="gpa"/>.</summary>
    public GuestRam(ulong size, ulong gpa = 0x1_0000)
    {
        AddRegion(gpa, size);
        _next = gpa;
    }

    public IReadOnlyList<RamRegion> Regions => _regions;

    /// <summary>Adds another region (e.g. adjacent, to make buffers that straddle two regions).</summary>
    public RamRegion AddRegion(ulong gpa, ulong size, ulong? userAddress = null, ulong mmapOffset = 0)
    {
        var fd = MemFd.Create($"guest-ram-{_regions.Count}", (long)(size + mmapOffset));
        var map = MemoryMapping.Map(fd, size + mmapOffset);
        var region = new RamRegion(gpa, size, userAddress ?? UserAddressBase + gpa, mmapOffset, fd, map);
        _regions.Add(region);
        return region;
    }

    /// <summary>Allocates <paramref name="size"/> bytes aligned to <paramref name="alignment"/> in the first region's space onwards.</summary>
    public ulong Allocate(ulong size, ulong alignment = 16)
    {
        ulong start = (_next + alignment - 1) & ~(alignment - 1);
        if (!Contains(start, size))
            throw new InvalidOperationException($"guest RAM exhausted allocating {size} bytes at 0x{start:x}");
        _next = start + size;
        return start;
    }

    public bool Contains(ulong gpa, ulong size)
    {
        foreach (var r in _regions)
            if (gpa >= r.Gpa && gpa + size <= r.Gpa + r.Size)
                return true;
        return false;
    }

    /// <summary>Bytes at a guest physical address (must lie in one region).</summary>
    public Span<byte> Span(ulong gpa, int length)
    {
        foreach (var r in _regions)
            if (gpa >= r.Gpa && gpa + (ulong)length <= r.Gpa + r.Size)
                return new Span<byte>((byte*)r.Mapping.Address + r.MmapOffset + (gpa - r.Gpa), length);
        throw new ArgumentOutOfRangeException(nameof(gpa), $"0x{gpa:x}+{length} is not inside one region");
    }

    internal byte* Pointer(ulong gpa, int length)
    {
        fixed (byte* p = Span(gpa, length))
            return p;
    }

    /// <summary>Front-end virtual address of a guest physical address (what SET_VRING_ADDR carries).</summary>
    public ulong UserAddressOf(ulong gpa)
    {
        foreach (var r in _regions)
            if (gpa >= r.Gpa && gpa < r.Gpa + r.Size)
                return r.UserAddress + (gpa - r.Gpa);
        throw new ArgumentOutOfRangeException(nameof(gpa), $"0x{gpa:x} is in no region");
    }

    public MemoryRegionDescription[] Describe() =>
        _regions.Select(r => new MemoryRegionDescription(r.Gpa, r.Size, r.UserAddress, r.MmapOffset)).ToArray();

    public int[] Fds => _regions.Select(r => r.Fd.Number).ToArray();

    public void Dispose()
    {
        foreach (var r in _regions)
        {
            r.Mapping.Dispose();
            r.Fd.Dispose();
        }
        _regions.Clear();
    }
}

/// <summary>One region of <see cref="GuestRam"/>.</summary>
public sealed record RamRegion(ulong Gpa, ulong Size, ulong UserAddress, ulong MmapOffset, FileDescriptor Fd, MemoryMapping Mapping);

/// <summary>
/// A range of guest RAM with its own allocator: what a driver places in a device's DMA window (rings,
/// buffers) stays inside it, whatever else is allocated from the RAM meanwhile.
/// </summary>
public sealed class RamArena
{
    private ulong _next;

    /// <summary>Reserves <paramref name="size"/> bytes of <paramref name="ram"/>, page-aligned.</summary>
    public RamArena(GuestRam ram, ulong size)
    {
        Ram = ram;
        Size = size;
        Start = ram.Allocate(size, 4096);
        _next = Start;
    }

    public GuestRam Ram { get; }
    public ulong Start { get; }
    public ulong Size { get; }

    public ulong Allocate(ulong size, ulong alignment = 16)
    {
        ulong start = (_next + alignment - 1) & ~(alignment - 1);
        if (start + size > Start + Size || start + size < start)
            throw new InvalidOperationException($"arena at 0x{Start:x} ({Size} bytes) exhausted allocating {size} bytes");
        _next = start + size;
        return start;
    }
}
