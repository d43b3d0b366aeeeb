using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The memory table under its policy, without a connection: sealing before the size is read,
/// unsealable files, mapping only a region's own pages, the per-connection mapped-bytes limit.
/// </summary>
[Trait("tier", "unit")]
public sealed class MemoryPolicyTests
{
    private const ulong MiB = 1 << 20;
    private const ulong TiB = 1UL << 40;

    private static (ulong, ulong, ulong, ulong) Region(ulong gpa, ulong size, ulong uva, ulong offset = 0) => (gpa, size, uva, offset);

    [Fact]
    public void An_accepted_memfd_is_sealed_so_it_can_no_longer_shrink()
    {
        using var table = new GuestMemoryTable();
        using var fd = MemFd.Create("sealed", (long)MiB);
        table.Replace(new[] { Region(0, MiB, 0x1000_0000) }, new[] { fd.Duplicate() });
        Assert.True(table.Current.Regions[0].SealedAgainstShrink);
        var e = Assert.Throws<NativeException>(() => fd.SetLength(0));
        Assert.Equal(1, e.Errno); // EPERM
        fd.SetLength((long)(2 * MiB)); // growing stays allowed
    }

    [Fact]
    public void An_unsealable_memfd_is_refused_naming_sealing_and_accepted_only_when_the_policy_allows_it()
    {
        using var strict = new GuestMemoryTable();
        var e = Assert.Throws<GuestMemoryException>(() =>
            strict.Add(0, MiB, 0x1000_0000, 0, MemFd.Create("unsealable", (long)MiB, allowSealing: false)));
        Assert.Equal(GuestMemoryError.Unsealable, e.Kind);
        Assert.Contains("cannot be sealed against shrinking", e.Message);
        Assert.Contains("MFD_ALLOW_SEALING", e.Message);
        Assert.Empty(strict.Current.Regions);

        using var lenient = new GuestMemoryTable(new MemoryPolicy { AllowUnsealed = true });
        var region = lenient.Add(0, MiB, 0x1000_0000, 0, MemFd.Create("unsealable", (long)MiB, allowSealing: false));
        Assert.False(region.SealedAgainstShrink);
        Assert.Contains("MFD_ALLOW_SEALING", region.UnsealedReason);
        Assert.True(lenient.Current.IsRangeMapped(0, MiB));
    }

    [Fact]
    public void A_file_that_is_not_a_memfd_cannot_be_sealed_and_is_refused()
    {
        string path = Path.Combine(Path.GetTempPath(), "vuv-plain-" + Guid.NewGuid().ToString("N")[..12]);
        try
        {
            using (var f = File.Create(path))
                f.SetLength((long)MiB);
            using var table = new GuestMemoryTable();
            using var file = File.Open(path, FileMode.Open, FileAccess.ReadWrite);
            // A FileDescriptor of its own (Duplicate) so the table can consume it.
            using var borrowed = new FileDescriptor((int)file.SafeFileHandle.DangerousGetHandle());
            var copy = borrowed.Duplicate();
            borrowed.SetHandleAsInvalid(); // the FileStream closes the original
            var e = Assert.Throws<GuestMemoryException>(() => table.Add(0, MiB, 0x1000_0000, 0, copy));
            Assert.Equal(GuestMemoryError.Unsealable, e.Kind);
            Assert.Contains("only memfds", e.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void A_region_far_into_a_sparse_file_maps_only_its_own_pages_at_the_right_bytes()
    {
        // 64 TiB into a sparse file, at an offset that is not page aligned.
        ulong offset = 64 * TiB + 0x1234, size = MiB;
        using var fd = MemFd.Create("sparse", (long)(64 * TiB + 2 * MiB));
        using (var tail = MemoryMapping.Map(fd, 2 * MiB, 64 * TiB))
            unsafe
            {
                var bytes = new Span<byte>((byte*)tail.Address, (int)(2 * MiB));
                bytes[0x1234] = 0xa1;                      // the region's first byte
                bytes[0x1234 + (int)size - 1] = 0xb2;      // its last byte
            }
        using var table = new GuestMemoryTable();
        var region = table.Add(0x4000_0000, size, 0x7000_0000_0000, offset, fd.Duplicate());

        Assert.True(region.MappedLength < size + 2 * (ulong)Environment.SystemPageSize, $"mapped {region.MappedLength} bytes for a {size}-byte region");
        var first = new byte[1];
        var last = new byte[1];
        Assert.True(table.Current.Read(0x4000_0000, first));
        Assert.True(table.Current.Read(0x4000_0000 + size - 1, last));
        Assert.Equal(0xa1, first[0]);
        Assert.Equal(0xb2, last[0]);
    }

    [Fact]
    public void An_offset_whose_region_end_overflows_is_refused()
    {
        using var table = new GuestMemoryTable();
        var e = Assert.Throws<GuestMemoryException>(() =>
            table.Add(0, 0x2000, 0x1000_0000, ulong.MaxValue - 0xfff, MemFd.Create("a", 0x2000)));
        Assert.Contains("overflows", e.Message);
    }

    [Fact]
    public void The_mapped_bytes_limit_refuses_a_table_over_it_and_the_old_table_stays()
    {
        using var table = new GuestMemoryTable(new MemoryPolicy { MaxMappedBytes = 4 * MiB });
        table.Replace(new[] { Region(0, 2 * MiB, 0x1000_0000) }, new[] { MemFd.Create("a", (long)(2 * MiB)) });
        var before = table.Current;

        var e = Assert.Throws<GuestMemoryException>(() => table.Replace(
            new[] { Region(0, 3 * MiB, 0x1000_0000), Region(3 * MiB, 3 * MiB, 0x2000_0000) },
            new[] { MemFd.Create("b", (long)(3 * MiB)), MemFd.Create("c", (long)(3 * MiB)) }));
        Assert.Equal(GuestMemoryError.OverLimit, e.Kind);
        Assert.Contains("limit of 4 MiB", e.Message);
        Assert.Same(before, table.Current);

        // Regions added one by one count together: 2 + 2 fits, 2 + 2 + 1 does not.
        table.Add(2 * MiB, 2 * MiB, 0x2000_0000, 0, MemFd.Create("d", (long)(2 * MiB)));
        var full = table.Current;
        e = Assert.Throws<GuestMemoryException>(() => table.Add(4 * MiB, MiB, 0x3000_0000, 0, MemFd.Create("e", (long)MiB)));
        Assert.Equal(GuestMemoryError.OverLimit, e.Kind);
        Assert.Same(full, table.Current);
        Assert.Equal(4 * MiB, table.MappedBytes);

        // A replacement is measured on its own: the table it replaces is about to go.
        table.Replace(new[] { Region(0, 4 * MiB, 0x1000_0000) }, new[] { MemFd.Create("f", (long)(4 * MiB)) });
        Assert.Single(table.Current.Regions);
    }

    [Fact]
    public void The_limit_counts_what_is_mapped_including_the_rounding_to_pages()
    {
        // 4 MiB of regions at unaligned offsets take a page more each: over a limit of exactly 4 MiB.
        using var table = new GuestMemoryTable(new MemoryPolicy { MaxMappedBytes = 4 * MiB });
        var e = Assert.Throws<GuestMemoryException>(() => table.Replace(
            new[] { Region(0, 2 * MiB, 0x1000_0000, 0x10), Region(2 * MiB, 2 * MiB, 0x2000_0000, 0x10) },
            new[] { MemFd.Create("a", (long)(3 * MiB)), MemFd.Create("b", (long)(3 * MiB)) }));
        Assert.Equal(GuestMemoryError.OverLimit, e.Kind);
        Assert.Empty(table.Current.Regions);
    }
}
