using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The dirty-log bitmap itself: bit layout, word boundaries, unaligned offsets, its end.</summary>
[Trait("tier", "unit")]
public sealed unsafe class DirtyLogBitmapTests
{
    private const ulong Page = DirtyLog.PageSize;

    [Fact]
    public void Pages_are_marked_bit_by_bit_across_word_boundaries_from_an_unaligned_offset()
    {
        // A log 20 bytes long at file offset 4: its bytes straddle 64-bit words of the file.
        using var fd = MemFd.Create("log", 4096);
        using var view = MemoryMapping.Map(fd, 4096);
        var file = new Span<byte>((void*)view.Address, 4096);
        using var log = DirtyLog.Map(fd.Duplicate(), 20, 4, allowUnsealed: false);

        log.Mark(0, 1);                       // page 0
        log.Mark(7 * Page + 5, Page);         // pages 7 and 8: bit 7 of byte 0, bit 0 of byte 1
        log.Mark(30 * Page, 10 * Page);       // pages 30..39: bytes 3 and 4, across the file's first word boundary
        log.Mark(159 * Page, 1);              // the last page: bit 7 of byte 19
        log.Mark(90 * Page, 0);               // an empty write marks nothing

        byte[] expected = new byte[20];
        foreach (ulong p in new ulong[] { 0, 7, 8 }.Concat(Enumerable.Range(30, 10).Select(i => (ulong)i)).Append(159UL))
            expected[p / 8] |= (byte)(1 << (int)(p % 8));
        Assert.Equal(expected, file.Slice(4, 20).ToArray());
        Assert.All(file[..4].ToArray(), b => Assert.Equal(0, b));
        Assert.All(file[24..].ToArray(), b => Assert.Equal(0, b));
        Assert.True(log.IsMarked(159 * Page));
        Assert.False(log.IsMarked(160 * Page));
        Assert.Equal(0, log.PagesOutside);
    }

    [Fact]
    public void A_write_beyond_the_log_is_counted_and_reported_never_marked_out_of_bounds()
    {
        using var fd = MemFd.Create("log", 4096);
        using var view = MemoryMapping.Map(fd, 4096);
        var file = new Span<byte>((void*)view.Address, 4096);
        var reported = new List<ulong>();
        using var log = DirtyLog.Map(fd.Duplicate(), 8, 0, allowUnsealed: false, reported.Add);

        log.Mark(62 * Page, 4 * Page);        // pages 62, 63 inside; 64, 65 outside
        log.Mark(1UL << 40, 16);              // far outside
        log.Mark(ulong.MaxValue - 2, 16);     // wraps the address space

        Assert.Equal(0xc0, file[7]);
        Assert.All(file[8..].ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(new[] { 64 * Page, 1UL << 40, ulong.MaxValue - 2 }, reported);
        Assert.True(log.PagesOutside >= 4);
    }

    [Fact]
    public void With_logging_on_the_data_path_still_allocates_nothing_and_marks_the_used_ring()
    {
        using var ring = new InThreadEchoRing(64, 1500);
        ulong size = 4096;
        using var fd = MemFd.Create("log", (long)size);
        using var log = DirtyLog.Map(fd.Duplicate(), size, 0, allowUnsealed: false);
        ring.Device.SetDirtyLog(log, ring.Driver.UsedRing);
        ring.RunBatch();
        ring.RunBatch();

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 8; i++)
            ring.RunBatch();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.True(ring.EchoesMatch());
        Assert.True(log.IsMarked(ring.Driver.UsedRing + 2));
        Assert.Equal(0, log.PagesOutside);
    }
}
