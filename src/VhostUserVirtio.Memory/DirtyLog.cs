using System.Runtime.CompilerServices;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Memory;

/// <summary>
/// The front end's dirty-page log for live migration (SET_LOG_BASE with LOG_SHMFD): a bitmap in
/// shared memory, one bit per 4 KiB page of guest physical address space (bit <c>page % 8</c> of byte
/// <c>page / 8</c>). Every byte the device writes into guest memory while logging is on is marked here,
/// with an atomic OR, since the front end clears words concurrently while it syncs (and several
/// workers may mark the same word). A page beyond the bitmap is not marked, never written out of
/// bounds; it is counted and reported through <see cref="DirtyLog(MemoryMapping, ulong, ulong, Action{ulong}?)"/>'s callback.
/// Disposed (unmapped) only by its owner once no worker can still mark it.
/// </summary>
public sealed unsafe class DirtyLog : IDisposable
{
    /// <summary>VHOST_LOG_PAGE: the guest memory one bit stands for.</summary>
    public const ulong PageSize = 0x1000;
    private const int PageShift = 12;

    /// <summary>
    /// The largest log accepted: 256 MiB of bitmap covers 8 TiB of guest physical address space, far
    /// beyond the memory a connection may map; a larger one would only take address space.
    /// </summary>
    public const ulong MaxSize = 256UL << 20;

    private readonly MemoryMapping _mapping;
    private readonly byte* _bitmap;
    private readonly Action<ulong>? _outside;
    private long _pagesOutside;

    private DirtyLog(MemoryMapping mapping, ulong lead, ulong size, Action<ulong>? outside)
    {
        _mapping = mapping;
        _bitmap = (byte*)mapping.Address + lead;
        Size = size;
        _outside = outside;
    }

    /// <summary>Bytes of bitmap.</summary>
    public ulong Size { get; }

    /// <summary>Guest physical addresses below this are covered by the bitmap.</summary>
    public ulong CoveredBytes => Size * 8 * PageSize;

    /// <summary>Pages written that lay beyond the bitmap (not marked).</summary>
    public long PagesOutside => Interlocked.Read(ref _pagesOutside);

    /// <summary>
    /// Validates and maps <paramref name="size"/> bytes of <paramref name="fd"/> from
    /// <paramref name="offset"/>. The descriptor is consumed (closed once mapped, or on failure).
    /// </summary>
    /// <param name="allowUnsealed">Accept a file that cannot be sealed against shrinking (see <see cref="MemoryPolicy.AllowUnsealed"/>).</param>
    /// <param name="outside">Told the guest address of a write beyond the bitmap (at most once per marked range); runs on the writing thread.</param>
    public static DirtyLog Map(FileDescriptor fd, ulong size, ulong offset, bool allowUnsealed, Action<ulong>? outside = null)
    {
        using (fd)
        {
            if (size == 0)
                throw new GuestMemoryException("zero-sized dirty log");
            if (size > MaxSize)
                throw new GuestMemoryException($"dirty log of {Bytes.Format(size)} exceeds the {Bytes.Format(MaxSize)} accepted (it would cover 8 TiB of guest memory)", GuestMemoryError.OverLimit);
            if (offset > long.MaxValue - size)
                throw new GuestMemoryException($"dirty log offset 0x{offset:x} + size 0x{size:x} is beyond what a file can hold");
            // As for memory regions: sealed first, so the size read below holds while it is mapped.
            if (!fd.TrySealAgainstShrink(out string? unsealable) && !allowUnsealed)
                throw new GuestMemoryException($"dirty log cannot be sealed against shrinking: {unsealable}", GuestMemoryError.Unsealable);
            var file = fd.GetStatus();
            if (file.Size < 0 || (ulong)file.Size < offset + size)
                throw new GuestMemoryException(
                    $"dirty log needs {offset + size} bytes of its file but the file has {file.Size}", GuestMemoryError.FileTooSmall);
            ulong page = (ulong)Environment.SystemPageSize;
            ulong mapOffset = offset & ~(page - 1);
            ulong lead = offset - mapOffset;
            ulong length = (lead + size + page - 1) & ~(page - 1);
            MemoryMapping mapping;
            try
            {
                mapping = MemoryMapping.Map(fd, length, mapOffset);
            }
            catch (NativeException e)
            {
                throw new GuestMemoryException($"cannot map the dirty log ({Bytes.Format(length)} at file offset 0x{mapOffset:x}): {e.Message}", GuestMemoryError.MapFailed);
            }
            return new DirtyLog(mapping, lead, size, outside);
        }
    }

    /// <summary>Marks every page that [<paramref name="gpa"/>, +<paramref name="length"/>) touches.</summary>
    public void Mark(ulong gpa, ulong length)
    {
        if (length == 0)
            return;
        ulong first = gpa >> PageShift;
        ulong last = (gpa + (length - 1) < gpa ? ulong.MaxValue : gpa + (length - 1)) >> PageShift;
        ulong pages = Size * 8;
        if (last >= pages)
        {
            ReportOutside(first < pages ? pages << PageShift : gpa, last - Math.Max(first, pages) + 1);
            if (first >= pages)
                return;
            last = pages - 1;
        }
        // One atomic OR per aligned 64-bit word: a frame rarely spans more than one.
        ulong page = first;
        while (page <= last)
        {
            ulong bit = (ulong)(_bitmap - (byte*)0) * 8 + page;     // bit number from address 0
            ulong wordBit = bit & 63;
            ulong* word = (ulong*)((bit >> 6) << 3);
            ulong count = Math.Min(64 - wordBit, last - page + 1);
            ulong mask = (count == 64 ? ulong.MaxValue : ((1UL << (int)count) - 1)) << (int)wordBit;
            Or(word, mask);
            page += count;
        }
    }

    /// <summary>
    /// The word containing a bitmap byte may start before the bitmap (a log mapped from an offset
    /// that is not a multiple of 8) or end after it, but never leaves the mapping, which is whole
    /// pages; bits outside the bitmap are never set since the mask covers only its pages.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Or(ulong* word, ulong mask)
    {
        if (BitConverter.IsLittleEndian)
            Interlocked.Or(ref *word, mask);
        else
            Interlocked.Or(ref *word, System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(mask));
    }

    /// <summary>Whether the page holding <paramref name="gpa"/> is marked (for tests and diagnostics).</summary>
    public bool IsMarked(ulong gpa)
    {
        ulong page = gpa >> PageShift;
        return page < Size * 8 && (Volatile.Read(ref _bitmap[page >> 3]) & (1 << (int)(page & 7))) != 0;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ReportOutside(ulong gpa, ulong pages)
    {
        Interlocked.Add(ref _pagesOutside, (long)Math.Min(pages, long.MaxValue));
        _outside?.Invoke(gpa);
    }

    public override string ToString() => $"dirty log of {Bytes.Format(Size)} (guest memory below 0x{CoveredBytes:x})";

    public void Dispose() => _mapping.Dispose();
}
