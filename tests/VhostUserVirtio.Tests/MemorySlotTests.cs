using VhostUserVirtio.Backend.Sessions;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The memory table at its full size: GET_MAX_MEM_SLOTS' 509 regions, each translated to its own
/// bytes by lookup, the 510th and overlapping ones refused, removal in the middle of many.
/// </summary>
[Trait("tier", "unit")]
public sealed class MemorySlotTests
{
    private const ulong Page = 0x1000;
    // Regions sit 64 KiB apart in guest space with holes between them, and in reverse order in the
    // front end's space, so neither order nor adjacency helps a lookup.
    private static ulong Gpa(int i) => 0x1_0000_0000UL + (ulong)i * 0x10000;
    private static ulong Uva(int i) => 0x7f00_0000_0000UL - (ulong)i * 0x10000;

    /// <summary>A table with <paramref name="count"/> one-page regions, region i on page i of one memfd.</summary>
    private static (GuestMemoryTable Table, FileDescriptor File) Table(int count)
    {
        var file = MemFd.Create("slots", (long)((ulong)GuestMemoryTable.MaxSlots * Page + Page));
        var table = new GuestMemoryTable();
        // Added out of order: the snapshot sorts them.
        foreach (int i in Enumerable.Range(0, count).OrderBy(i => (i * 7919) % count))
            table.Add(Gpa(i), Page, Uva(i), (ulong)i * Page, file.Duplicate());
        return (table, file);
    }

    private static unsafe bool Translate(GuestMemory m, ulong gpa, out ulong available) => m.TryTranslate(gpa, out _, out available);

    private static unsafe ReadOnlySpan<byte> ViewOf(MemoryMapping map) => new((void*)map.Address, (int)map.Length);

    [Fact]
    public void Five_hundred_nine_regions_are_accepted_and_every_address_translates_to_its_own_region()
    {
        var (table, file) = Table(GuestMemoryTable.MaxSlots);
        using var ownedTable = table;
        using var ownedFile = file;
        var m = table.Current;
        Assert.Equal(509, m.Regions.Count);
        for (int i = 0; i < GuestMemoryTable.MaxSlots; i++)
        {
            Assert.True(m.Write(Gpa(i), BitConverter.GetBytes(i)));
            Assert.True(m.Write(Gpa(i) + Page - 4, BitConverter.GetBytes(~i)));
            Assert.False(m.IsRangeMapped(Gpa(i) + Page, 1));       // the hole after it
            Assert.False(m.IsRangeMapped(Gpa(i) - 1, 1));           // the hole before it
            Assert.False(m.TryGetSpan(Gpa(i) + Page - 2, 4, out _)); // runs off its end
            Assert.True(m.TryUserToGuest(Uva(i) + 8, out ulong gpa));
            Assert.Equal(Gpa(i) + 8, gpa);
        }
        // Each write landed on its region's own page of the file (mmap offset honoured).
        using var view = MemoryMapping.Map(file, (ulong)GuestMemoryTable.MaxSlots * Page);
        var bytes = ViewOf(view);
        for (int i = 0; i < GuestMemoryTable.MaxSlots; i++)
        {
            Assert.Equal(i, BitConverter.ToInt32(bytes[(i * (int)Page)..]));
            Assert.Equal(~i, BitConverter.ToInt32(bytes[(i * (int)Page + (int)Page - 4)..]));
        }
        // Lookups alternating between far-apart regions (the last-hit hint misses every time).
        for (int k = 0; k < 2000; k++)
        {
            int i = k % 2 == 0 ? k % 509 : 508 - k % 509;
            Assert.True(Translate(m, Gpa(i) + 16, out ulong available));
            Assert.Equal(Page - 16, available);
        }
        Assert.False(Translate(m, 0, out _));
        Assert.False(Translate(m, ulong.MaxValue, out _));
    }

    [Fact]
    public void The_510th_region_is_refused_and_changes_nothing()
    {
        var (table, file) = Table(GuestMemoryTable.MaxSlots);
        using var ownedTable = table;
        using var ownedFile = file;
        var before = table.Current;
        var e = Assert.Throws<GuestMemoryException>(() => table.Add(Gpa(600), Page, Uva(600), 0, file.Duplicate()));
        Assert.Contains("all 509 memory slots are in use", e.Message);
        Assert.Same(before, table.Current);
    }

    [Fact]
    public void A_region_overlapping_any_of_509_in_guest_or_front_end_space_is_refused()
    {
        var (table, file) = Table(GuestMemoryTable.MaxSlots - 1);
        using var ownedTable = table;
        using var ownedFile = file;
        var before = table.Current;
        // Guest space: straddles the end of region 300. Front-end space: inside region 17's.
        var guest = Assert.Throws<GuestMemoryException>(() => table.Add(Gpa(300) + Page / 2, Page, 0x1000_0000, 0, file.Duplicate()));
        Assert.Contains("guest physical space", guest.Message);
        var user = Assert.Throws<GuestMemoryException>(() => table.Add(Gpa(700), Page, Uva(17) + 8, 0, file.Duplicate()));
        Assert.Contains("front-end address space", user.Message);
        Assert.Same(before, table.Current);
        table.Add(Gpa(700), Page, 0x1000_0000, 0, file.Duplicate()); // the last free slot, clear of both
        Assert.Equal(509, table.Current.Regions.Count);
    }

    [Fact]
    public void Removing_regions_among_many_unmaps_exactly_those()
    {
        var (table, file) = Table(GuestMemoryTable.MaxSlots);
        using var ownedTable = table;
        using var ownedFile = file;
        var removed = new[] { 0, 1, 254, 255, 507, 508 };
        var retired = removed.Select(i => table.Remove(Gpa(i), Page, Uva(i))).ToList();
        var m = table.Current;
        Assert.Equal(503, m.Regions.Count);
        for (int i = 0; i < GuestMemoryTable.MaxSlots; i++)
            Assert.Equal(!removed.Contains(i), m.IsRangeMapped(Gpa(i), Page));
        Assert.Throws<GuestMemoryException>(() => table.Remove(Gpa(254), Page, Uva(254)));
        foreach (var r in retired)
            r.Dispose();
        // The freed slots take new regions again.
        for (int k = 0; k < removed.Length; k++)
            table.Add(Gpa(1000 + k), Page, Uva(1000 + k), 0, file.Duplicate());
        Assert.Equal(509, table.Current.Regions.Count);
    }

    [Fact]
    public void A_front_end_adds_509_regions_over_the_socket_the_510th_is_refused_and_traffic_uses_the_last()
    {
        using var backend = new EchoBackend(devices: 1);
        using var s = FrontEndSession.Start(backend.SocketPath(0), new FrontEndSession.Options { RamSize = 1 << 20 });
        Assert.Equal(509UL, s.Connection.GetMaxMemSlots());
        RamRegion last = s.Ram.Regions[0];
        for (int i = 1; i < GuestMemoryTable.MaxSlots; i++)
        {
            last = s.Ram.AddRegion(Gpa(i), Page);
            s.Connection.AddMemRegion(last);
        }
        var extra = s.Ram.AddRegion(Gpa(GuestMemoryTable.MaxSlots), Page);
        Assert.Throws<FrontEndException>(() => s.Connection.AddMemRegion(extra));

        var payload = Echo.Text("in the 509th region");
        payload.CopyTo(s.Ram.Span(last.Gpa, payload.Length));
        var q = s.Queues[0];
        q.AddChain(new BufferSpec[] { new(last.Gpa, (uint)payload.Length, false), new(last.Gpa + 2048, (uint)payload.Length, true) });
        q.Notify();
        q.WaitUsed();
        Assert.Equal(payload, s.Ram.Span(last.Gpa + 2048, payload.Length).ToArray());
    }

    [Fact]
    public void A_kept_session_record_holds_all_509_regions_beside_256_rings()
    {
        using var memory = MemFd.Create("ram", 4096);
        using var kick = new EventFd();
        var state = new SessionState
        {
            Protocol = Protocol.ProtocolFeatures.ConfigureMemSlots,
            Regions = Enumerable.Range(0, GuestMemoryTable.MaxSlots).Select(i => new KeptRegion(Gpa(i), Page, Uva(i), (ulong)i * Page, memory)).ToList(),
            Queues = Enumerable.Range(0, 256).Select(i => new KeptQueue(i, 256, 0, true, true, (0x1000UL, 0x2000UL, 0x3000UL), 0x4000, kick.Descriptor, kick.Descriptor, kick.Descriptor)).ToList(),
        };
        using var record = SessionRecord.Create("slots");
        record.Write(state, _ => 1);
        var read = record.Read(_ => memory);
        Assert.NotNull(read);
        Assert.Equal(state.Regions.Select(r => (r.GuestAddress, r.UserAddress, r.MmapOffset)), read.Regions.Select(r => (r.GuestAddress, r.UserAddress, r.MmapOffset)));
        Assert.Equal(256, read.Queues.Count);
    }
}
