using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Dirty logging for a VF the owner drives (legacy interface): its rings have no SET_VRING_ADDR, so
/// its used ring is logged at its own guest address while its front end has LOG_ALL on.
/// </summary>
[Trait("tier", "unit")]
public sealed unsafe class OwnerDrivenDirtyLogTests() : OwnerTest(useAllCommands: true)
{
    private const ulong Page = 0x1000;
    private const string A = "02:56:56:00:00:01", B = "02:56:56:00:00:02";

    private static SortedSet<ulong> Marked(MemoryMapping map, ulong size)
    {
        var bytes = new Span<byte>((void*)map.Address, (int)size);
        var pages = new SortedSet<ulong>();
        for (int i = 0; i < bytes.Length; i++)
            for (int bit = 0; bit < 8; bit++)
                if ((Volatile.Read(ref bytes[i]) & (1 << bit)) != 0)
                    pages.Add((ulong)i * 8 + (ulong)bit);
        return pages;
    }

    [Fact]
    public void An_owner_driven_rings_used_ring_and_buffers_are_logged_while_its_front_end_has_log_all_on()
    {
        using var legacy = LegacyNetDriver.Start(_owner.Admin, 1, _backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        var backend = _backend.Member(1).Endpoint.Backend;
        ulong lastGpa = legacy.Ram.Regions.Max(r => r.Gpa + r.Size) - 1;
        ulong size = (lastGpa / (64 * Page) + 1) * 8;
        using var fd = MemFd.Create("vhost-log", (long)size);
        using var map = MemoryMapping.Map(fd, size);

        legacy.Vmm.SetLogBase(fd, size);
        legacy.Vmm.SetFeatures(1UL << VirtioFeature.VhostLogAll); // the owner's features stay; only logging switches
        Assert.True(backend.LoggingDirtyPages);
        var frame = NetFrontEnd.Frame(A, B, "while migrating");
        vf2.Send(frame);
        Assert.Equal(frame.AsSpan(14).ToArray(), legacy.Receive(10_000)!.AsSpan(14).ToArray());

        var marked = Marked(map, size);
        var rx = legacy.Rx;
        var usedPages = Enumerable.Range(0, (int)((SplitRing.UsedRingSize(rx.Size) + Page - 1) / Page))
            .Select(i => rx.UsedRing / Page + (ulong)i).ToHashSet();
        Assert.Contains((rx.UsedRing + 2) / Page, marked);
        Assert.Contains(marked, p => !usedPages.Contains(p)); // the receive buffer
        ulong ringStart = rx.DescriptorTable / Page, availEnd = (rx.AvailableRing + SplitRing.AvailableRingSize(rx.Size) - 1) / Page;
        Assert.DoesNotContain(marked, p => p >= ringStart && p <= availEnd); // the driver's parts are never written

        // Off again: the next frame marks nothing.
        legacy.Vmm.SetFeatures(0);
        Assert.False(backend.LoggingDirtyPages);
        new Span<byte>((void*)map.Address, (int)size).Clear();
        vf2.Send(frame);
        Assert.NotNull(legacy.Receive(10_000));
        Assert.Empty(Marked(map, size));
        // Logging aside, the owner still drives the device: its other feature bits are not the front end's to set.
        Assert.Throws<VhostUserVirtio.FrontEnd.FrontEndException>(() => legacy.Vmm.SetFeatures(0));
    }
}
