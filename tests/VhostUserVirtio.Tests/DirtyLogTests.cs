using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Dirty-page logging for live migration, switched on and off on running rings in the order QEMU 7.2
/// sends it (hw/virtio/vhost.c vhost_migration_log): SET_LOG_BASE, SET_FEATURES with LOG_ALL,
/// SET_VRING_ADDR with VHOST_VRING_F_LOG per ring; off: SET_FEATURES without LOG_ALL, SET_VRING_ADDR
/// without the flag. The bitmap is read the way QEMU reads it, from its own mapping of the log.
/// </summary>
[Trait("tier", "unit")]
public sealed unsafe class DirtyLogTests : IDisposable
{
    private const string A = "02:56:56:00:00:01", B = "02:56:56:00:00:02";
    private const ulong Page = 0x1000;
    // VF2's memory: two regions, neither at guest address 0; receive buffers only in the second.
    private const ulong LowBase = 0x10_0000, HighBase = 0x4000_0000, RegionSize = 1 << 20;
    private const ulong LogAll = 1UL << VirtioFeature.VhostLogAll;
    private readonly GroupBackend _backend = new(vfs: 2);

    public void Dispose() => _backend.Dispose();

    /// <summary>A log as QEMU makes it: a sealed memfd, mapped by the front end too.</summary>
    private sealed class Log : IDisposable
    {
        public Log(ulong size, ulong fileSize = 0)
        {
            Size = size;
            Fd = MemFd.Create("vhost-log", (long)Math.Max(size, fileSize));
            Mapping = MemoryMapping.Map(Fd, Math.Max(size, fileSize));
        }

        public ulong Size { get; }
        public FileDescriptor Fd { get; }
        public MemoryMapping Mapping { get; }
        public Span<byte> Bytes => new((void*)Mapping.Address, (int)Mapping.Length);

        public SortedSet<ulong> MarkedPages()
        {
            var pages = new SortedSet<ulong>();
            var b = Bytes[..(int)Size];
            for (int i = 0; i < b.Length; i++)
                for (int bit = 0; bit < 8; bit++)
                    if ((Volatile.Read(ref b[i]) & (1 << bit)) != 0)
                        pages.Add((ulong)i * 8 + (ulong)bit);
            return pages;
        }

        /// <summary>What QEMU's sync does: take the bits and clear them.</summary>
        public void Clear() => Bytes.Clear();

        public void Dispose()
        {
            Mapping.Dispose();
            Fd.Dispose();
        }
    }

    /// <summary>QEMU's log size: one u64 per 64 pages up to the highest guest address of the table (vhost_get_log_size).</summary>
    private static ulong QemuLogSize(ulong lastGpa) => (lastGpa / (64 * Page) + 1) * 8;

    private static GuestRam TwoRegions()
    {
        var ram = new GuestRam(RegionSize, LowBase);
        ram.AddRegion(HighBase, RegionSize);
        return ram;
    }

    private static void EnableLogging(NetFrontEnd fe, Log log)
    {
        var c = fe.Session.Connection;
        c.SetLogBase(log.Fd, log.Size);
        c.SetFeatures(fe.Session.Features | LogAll);
        foreach (var q in fe.Session.Queues)
            c.SetVringAddr(new VringAddress((uint)q.Index, VringAddress.LogFlag, fe.Session.Ram.UserAddressOf(q.DescriptorTable),
                fe.Session.Ram.UserAddressOf(q.UsedRing), fe.Session.Ram.UserAddressOf(q.AvailableRing), q.UsedRing));
    }

    private static void DisableLogging(NetFrontEnd fe)
    {
        var c = fe.Session.Connection;
        c.SetFeatures(fe.Session.Features);
        foreach (var q in fe.Session.Queues)
            c.SetVringAddr((uint)q.Index, fe.Session.Ram.UserAddressOf(q.DescriptorTable),
                fe.Session.Ram.UserAddressOf(q.UsedRing), fe.Session.Ram.UserAddressOf(q.AvailableRing));
    }

    private static IEnumerable<ulong> PagesOf(ulong gpa, ulong length)
    {
        for (ulong p = gpa / Page; p <= (gpa + length - 1) / Page; p++)
            yield return p;
    }

    /// <summary>
    /// Sends frames of the given payload sizes from VF1 into VF2's receive buffers (each posted at a
    /// page offset of 0xf00 in the high region, so larger frames cross a page) and returns the pages
    /// those writes must have dirtied, plus the receive ring's used-ring pages they must have dirtied.
    /// </summary>
    private static (HashSet<ulong> Buffers, HashSet<ulong> UsedRing) Traffic(NetFrontEnd vf1, NetFrontEnd vf2, ref int slot, params int[] sizes)
    {
        var buffers = new HashSet<ulong>();
        var used = new HashSet<ulong>();
        foreach (int size in sizes)
        {
            ulong at = HighBase + (ulong)slot * 2 * Page + 0xf00;
            slot++;
            vf2.PostRxAt(at, 2048);
            var frame = NetFrontEnd.Frame(B, A, new string('x', size), padTo: 60);
            ushort usedBefore = vf2.Rx.UsedIndex;
            vf1.Send(frame);
            var (numBuffers, got) = vf2.Receive();
            Assert.Equal(1, numBuffers);
            Assert.Equal(frame, got);
            buffers.UnionWith(PagesOf(at, (ulong)(NetFrontEnd.HeaderSize + frame.Length)));
            ulong elem = vf2.Rx.UsedRing + 4 + (ulong)SplitRing.UsedElementSize * (ulong)(usedBefore % vf2.Rx.Size);
            used.UnionWith(PagesOf(elem, SplitRing.UsedElementSize));
            used.UnionWith(PagesOf(vf2.Rx.UsedRing + 2, 2));
        }
        return (buffers, used);
    }

    /// <summary>Every page of VF2's used rings: the device may also write their flags and avail_event words.</summary>
    private static HashSet<ulong> UsedRingPages(NetFrontEnd fe) =>
        fe.Session.Queues.SelectMany(q => PagesOf(q.UsedRing, SplitRing.UsedRingSize(q.Size))).ToHashSet();

    private static void AssertLogged(Log log, HashSet<ulong> buffers, HashSet<ulong> used, HashSet<ulong> usedRingPages)
    {
        var marked = log.MarkedPages();
        foreach (var p in buffers)
            Assert.True(marked.Contains(p), $"receive buffer page 0x{p * Page:x} was written but not logged");
        foreach (var p in used)
            Assert.True(marked.Contains(p), $"used ring page 0x{p * Page:x} was written but not logged");
        foreach (var p in marked)
            Assert.True(buffers.Contains(p) || usedRingPages.Contains(p),
                $"page 0x{p * Page:x} logged, but the device wrote neither a receive buffer nor a used ring there");
    }

    [Fact]
    public void Logging_switched_on_and_off_mid_run_as_qemu_does_marks_exactly_the_written_pages()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2), ram: TwoRegions());
        Assert.True(VirtioFeature.Has(vf2.Session.Connection.GetFeatures(), VirtioFeature.VhostLogAll));
        Assert.True((vf2.Session.Connection.Negotiated & ProtocolFeatures.LogShmfd) != 0);
        var usedRingPages = UsedRingPages(vf2);
        int slot = 0;

        // Running before logging, as a guest is when migration starts.
        Traffic(vf1, vf2, ref slot, 40, 1400);

        using var log = new Log(QemuLogSize(HighBase + RegionSize - 1));
        EnableLogging(vf2, log);
        Assert.Empty(log.MarkedPages()); // switching writes nothing into the guest
        var (buffers, used) = Traffic(vf1, vf2, ref slot, 40, 1000, 1400, 100);
        AssertLogged(log, buffers, used, usedRingPages);
        Assert.Contains(buffers, p => p >= HighBase / Page); // the second region, far above the first
        Assert.Equal(0, _backend.Member(2).Endpoint.Backend.DirtyLog!.PagesOutside);

        // QEMU grows the log (a second SET_LOG_BASE) while logging: the new one takes over.
        using var bigger = new Log(QemuLogSize(HighBase + RegionSize - 1) + Page);
        log.Clear();
        vf2.Session.Connection.SetLogBase(bigger.Fd, bigger.Size);
        (buffers, used) = Traffic(vf1, vf2, ref slot, 1200, 60);
        AssertLogged(bigger, buffers, used, usedRingPages);
        Assert.Empty(log.MarkedPages());

        // Off in QEMU's order; the rings keep running and nothing more is marked.
        bigger.Clear();
        DisableLogging(vf2);
        Traffic(vf1, vf2, ref slot, 40, 1400, 500);
        Assert.Empty(bigger.MarkedPages());
        Assert.False(_backend.Member(2).Endpoint.Backend.LoggingDirtyPages);

        // Nothing lost or repeated across the switches: every frame came once, in order (Traffic checked each).
        Assert.Equal((ushort)slot, vf2.Rx.UsedIndex);
    }

    [Fact]
    public void A_log_too_small_for_the_memory_is_never_written_beyond_its_end_and_says_so()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2), ram: TwoRegions());
        int slot = 0;
        // 64 bytes of log cover the first 2 MiB of guest memory: the low region, not the high one.
        using var log = new Log(64, fileSize: Page);
        EnableLogging(vf2, log);
        Assert.True(_backend.Logs.HasWarning("does not cover the memory table"));
        Traffic(vf1, vf2, ref slot, 40, 1400);

        Assert.True(_backend.Member(2).Endpoint.Backend.DirtyLog!.PagesOutside > 0);
        Assert.True(_backend.Logs.HasWarning("beyond the 64-byte dirty log"));
        // The rest of the file, past the log, is untouched.
        Assert.All(log.Bytes[64..].ToArray(), b => Assert.Equal(0, b));
        // The used ring (low region) is still logged.
        Assert.Contains(vf2.Rx.UsedRing / Page, log.MarkedPages());
    }

    [Fact]
    public void A_log_with_a_bad_size_or_offset_is_refused_and_the_connection_stays_usable()
    {
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        var c = vf2.Session.Connection;
        using var log = new Log(Page);
        Assert.Throws<FrontEndException>(() => c.SetLogBase(log.Fd, 0));                      // empty
        Assert.Throws<FrontEndException>(() => c.SetLogBase(log.Fd, Page, Page));             // past the end of the file
        Assert.Throws<FrontEndException>(() => c.SetLogBase(log.Fd, 8, ulong.MaxValue - 4));   // offset + size overflows
        Assert.Throws<FrontEndException>(() => c.SetLogBase(log.Fd, 1UL << 40));              // far beyond any memory
        // Without its descriptor: refused with a failure reply (QEMU reads one), not a dropped connection.
        c.SendRaw((uint)FrontendRequest.SetLogBase, MessageHeader.Version, new byte[16]);
        Assert.NotEqual(0UL, BitConverter.ToUInt64(c.ReadReply(FrontendRequest.SetLogBase).Payload));
        Assert.Equal(MessageErrorKind.WrongDescriptorCount, _backend.Member(2).Endpoint.Backend.LastRejection?.Kind);
        Assert.Null(_backend.Member(2).Endpoint.Backend.DirtyLog);
        Assert.True(VirtioFeature.Has(c.GetFeatures(), VirtioFeature.VhostLogAll));
        c.SetLogBase(log.Fd, Page, 0);
        Assert.NotNull(_backend.Member(2).Endpoint.Backend.DirtyLog);
    }
}
