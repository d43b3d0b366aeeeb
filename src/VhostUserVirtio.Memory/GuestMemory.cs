using System.Runtime.CompilerServices;

namespace VhostUserVirtio.Memory;

/// <summary>
/// An immutable snapshot of the guest memory table. All translation is bounds-checked with
/// overflow-safe arithmetic: a guest address either resolves to bytes inside a mapped region or is
/// refused. The snapshot never unmaps anything itself; its owner retires regions only after every
/// user has moved to a newer snapshot.
/// </summary>
public sealed unsafe class GuestMemory
{
    private readonly MemoryRegion[] _regions;
    // Region starts in guest-physical order, apart from the regions so a lookup walks one dense array.
    private readonly ulong[] _starts;
    // The region the last translation hit. Read and written by every worker using this snapshot
    // without locks: an int store is atomic and any index is checked before use, so a stale or
    // clobbered hint costs only a search.
    private int _hint;

    public static readonly GuestMemory Empty = new(Array.Empty<MemoryRegion>());

    internal GuestMemory(MemoryRegion[] regions)
    {
        _regions = regions;
        Array.Sort(_regions, (a, b) => a.GuestPhysicalAddress.CompareTo(b.GuestPhysicalAddress));
        _starts = new ulong[_regions.Length];
        for (int i = 0; i < _regions.Length; i++)
            _starts[i] = _regions[i].GuestPhysicalAddress;
    }

    public IReadOnlyList<MemoryRegion> Regions => _regions;

    /// <summary>
    /// Translates a guest physical address to a host pointer and the number of bytes available
    /// from there to the end of its region. False when the address is in no region. Regions never
    /// overlap, so the one that can hold an address is the last starting at or below it: the last
    /// region hit, else a binary search (at most 9 steps for 509 regions), never a scan.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryTranslate(ulong gpa, out byte* host, out ulong available)
    {
        var regions = _regions;
        int hint = _hint;
        if ((uint)hint < (uint)regions.Length && Hit(regions[hint], gpa, out host, out available))
            return true;
        int i = Floor(_starts, gpa);
        if (i >= 0 && Hit(regions[i], gpa, out host, out available))
        {
            _hint = i;
            return true;
        }
        host = null;
        available = 0;
        return false;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Hit(MemoryRegion r, ulong gpa, out byte* host, out ulong available)
    {
        ulong off = gpa - r.GuestPhysicalAddress;
        if (gpa >= r.GuestPhysicalAddress && off < r.Size)
        {
            host = r.HostBase + off;
            available = r.Size - off;
            return true;
        }
        host = null;
        available = 0;
        return false;
    }

    /// <summary>Index of the last start at or below <paramref name="gpa"/>, or -1.</summary>
    private static int Floor(ulong[] starts, ulong gpa)
    {
        int lo = 0, hi = starts.Length - 1, found = -1;
        while (lo <= hi)
        {
            int mid = (int)((uint)(lo + hi) >> 1);
            if (starts[mid] <= gpa)
            {
                found = mid;
                lo = mid + 1;
            }
            else
            {
                hi = mid - 1;
            }
        }
        return found;
    }

    /// <summary>A pointer to <paramref name="length"/> bytes that lie within one region, or null.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public byte* GetPointer(ulong gpa, ulong length)
    {
        if (TryTranslate(gpa, out byte* host, out ulong available) && length <= available)
            return host;
        return null;
    }

    /// <summary>A span over bytes that lie within one region; false if unmapped or split across regions.</summary>
    public bool TryGetSpan(ulong gpa, int length, out Span<byte> span)
    {
        byte* p = length < 0 ? null : GetPointer(gpa, (ulong)length);
        span = p == null ? default : new Span<byte>(p, length);
        return p != null;
    }

    /// <summary>True when every byte of [gpa, gpa+length) is mapped (possibly across adjacent regions).</summary>
    public bool IsRangeMapped(ulong gpa, ulong length)
    {
        if (gpa + length < gpa)
            return false;
        while (length > 0)
        {
            if (!TryTranslate(gpa, out _, out ulong available))
                return false;
            ulong step = Math.Min(available, length);
            gpa += step;
            length -= step;
        }
        return true;
    }

    /// <summary>Copies guest bytes out, following the range across regions. False if any byte is unmapped.</summary>
    public bool Read(ulong gpa, Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            if (!TryTranslate(gpa, out byte* host, out ulong available))
                return false;
            int step = (int)Math.Min(available, (ulong)destination.Length);
            new ReadOnlySpan<byte>(host, step).CopyTo(destination);
            destination = destination[step..];
            gpa += (ulong)step;
        }
        return true;
    }

    /// <summary>Copies bytes into guest memory, following the range across regions. False if any byte is unmapped (nothing past it is written).</summary>
    public bool Write(ulong gpa, ReadOnlySpan<byte> source)
    {
        if (!IsRangeMapped(gpa, (ulong)source.Length))
            return false;
        while (!source.IsEmpty)
        {
            TryTranslate(gpa, out byte* host, out ulong available);
            int step = (int)Math.Min(available, (ulong)source.Length);
            source[..step].CopyTo(new Span<byte>(host, step));
            source = source[step..];
            gpa += (ulong)step;
        }
        return true;
    }

    /// <summary>
    /// A view of [<paramref name="start"/>, start+<paramref name="length"/>) of this snapshot at the same
    /// addresses: everything outside it reads as unmapped. What a device with its own DMA space gets of
    /// a memory it shares with others (a managed device's window into its owner's memory). The view
    /// maps nothing of its own; it is usable exactly as long as this snapshot is.
    /// </summary>
    public GuestMemory Window(ulong start, ulong length)
    {
        if (length == 0 || start + length < start)
            return Empty;
        var slices = new List<MemoryRegion>();
        foreach (var r in _regions)
            if (r.Slice(start, length) is { } slice)
                slices.Add(slice);
        return slices.Count == 0 ? Empty : new GuestMemory(slices.ToArray());
    }

    /// <summary>Translates a front-end virtual address (as used for ring addresses) to a guest physical address.</summary>
    public bool TryUserToGuest(ulong userAddress, out ulong gpa)
    {
        foreach (var r in _regions)
        {
            if (r.ContainsUser(userAddress))
            {
                gpa = r.GuestPhysicalAddress + (userAddress - r.UserAddress);
                return true;
            }
        }
        gpa = 0;
        return false;
    }
}
