using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

[Trait("tier", "unit")]
public sealed class GuestMemoryTests
{
    private static (ulong, ulong, ulong, ulong) Region(ulong gpa, ulong size, ulong uva, ulong offset = 0) => (gpa, size, uva, offset);

    [Fact]
    public void Translation_is_bounds_checked_at_region_edges_and_against_overflow()
    {
        using var table = new GuestMemoryTable();
        table.Replace(new[] { Region(0x10000, 0x4000, 0x7000_0000) }, new[] { MemFd.Create("a", 0x4000) });
        var m = table.Current;

        Assert.True(m.IsRangeMapped(0x10000, 0x4000));
        Assert.True(m.IsRangeMapped(0x13fff, 1));
        Assert.False(m.IsRangeMapped(0x13fff, 2));
        Assert.False(m.IsRangeMapped(0xffff, 1));
        Assert.False(m.IsRangeMapped(ulong.MaxValue, 2));
        Assert.False(m.IsRangeMapped(0x10000, ulong.MaxValue));
        Assert.False(m.TryGetSpan(0x13ff0, 0x20, out _));
        Assert.True(m.TryGetSpan(0x13ff0, 0x10, out var span));
        Assert.Equal(0x10, span.Length);
        Assert.True(m.TryUserToGuest(0x7000_0010, out ulong gpa));
        Assert.Equal(0x10010UL, gpa);
        Assert.False(m.TryUserToGuest(0x7000_4000, out _));
    }

    [Fact]
    public void Reads_and_writes_follow_a_range_across_adjacent_regions()
    {
        using var table = new GuestMemoryTable();
        table.Replace(new[] { Region(0x0, 0x1000, 0x1_0000_0000), Region(0x1000, 0x1000, 0x2_0000_0000, 0x1000) },
            new[] { MemFd.Create("a", 0x1000), MemFd.Create("b", 0x2000) });
        var m = table.Current;
        var data = Enumerable.Range(0, 64).Select(i => (byte)i).ToArray();
        Assert.True(m.Write(0xfe0, data));
        var back = new byte[64];
        Assert.True(m.Read(0xfe0, back));
        Assert.Equal(data, back);
        Assert.False(m.TryGetSpan(0xfe0, 64, out _));          // not contiguous in one mapping
        Assert.False(m.Write(0x1fe0, data));                   // runs off the end: nothing written
    }

    [Fact]
    public void A_bad_table_leaves_the_old_one_in_place()
    {
        using var table = new GuestMemoryTable();
        table.Replace(new[] { Region(0x0, 0x1000, 0x1000_0000) }, new[] { MemFd.Create("a", 0x1000) });
        var before = table.Current;
        Assert.Throws<GuestMemoryException>(() => table.Replace(
            new[] { Region(0x0, 0x2000, 0x2000_0000), Region(0x1000, 0x1000, 0x3000_0000) },
            new[] { MemFd.Create("b", 0x2000), MemFd.Create("c", 0x1000) }));
        Assert.Same(before, table.Current);
        Assert.Throws<GuestMemoryException>(() => table.Add(0x8000, 0x1000, 0x1000_0800, 0, MemFd.Create("d", 0x1000)));
        Assert.Same(before, table.Current);
    }

    [Fact]
    public void Buffers_straddling_two_regions_echo_and_removing_a_region_unmaps_it_safely()
    {
        using var backend = new EchoBackend(devices: 1);
        using var s = FrontEndSession.Start(backend.SocketPath(0), new FrontEndSession.Options { RamSize = 1 << 20 });
        var first = s.Ram.Regions[0];
        var second = s.Ram.AddRegion(first.Gpa + first.Size, 1 << 20);
        var third = s.Ram.AddRegion(second.Gpa + second.Size, 1 << 20);
        s.Connection.AddMemRegion(second);
        s.Connection.AddMemRegion(third);

        // 64 bytes each way: the readable buffer straddles regions 1/2, the writable one regions 2/3.
        ulong src = second.Gpa - 24, dst = third.Gpa - 40;
        var payload = Enumerable.Range(1, 64).Select(i => (byte)i).ToArray();
        payload.AsSpan(0, 24).CopyTo(s.Ram.Span(src, 24));
        payload.AsSpan(24).CopyTo(s.Ram.Span(second.Gpa, 40));
        var q = s.Queues[0];
        q.AddChain(new BufferSpec[] { new(src, 64, false), new(dst, 64, true) });
        q.Notify();
        Assert.Equal(64u, q.WaitUsed().Length);
        Assert.Equal(payload, s.Ram.Span(dst, 40).ToArray().Concat(s.Ram.Span(third.Gpa, 24).ToArray()).ToArray());

        s.Connection.RemoveMemRegion(second);
        q.AddChain(new BufferSpec[] { new(second.Gpa + 8, 8, false) });
        q.Notify();
        Assert.True(s.ErrorFds[0].Wait(10_000));
        Assert.True(backend.Logs.WaitForWarning("outside guest memory"));
    }

    [Fact]
    public void Memory_table_replaced_while_rings_run_keeps_traffic_flowing()
    {
        using var backend = new EchoBackend(devices: 1);
        using var s = FrontEndSession.Start(backend.SocketPath(0));
        Echo.RoundTrip(s, 0, Echo.Text("before"));
        var extra = s.Ram.AddRegion(0x4000_0000, 1 << 20);
        s.Connection.SetMemTable(s.Ram);          // same RAM plus one region: every mapping is replaced
        Assert.Equal(Echo.Text("after"), Echo.RoundTrip(s, 0, Echo.Text("after")));

        var q = s.Queues[1];
        var payload = Echo.Text("in the new region");
        payload.CopyTo(s.Ram.Span(extra.Gpa, payload.Length));
        q.AddChain(new BufferSpec[] { new(extra.Gpa, (uint)payload.Length, false), new(extra.Gpa + 4096, (uint)payload.Length, true) });
        q.Notify();
        q.WaitUsed();
        Assert.Equal(payload, s.Ram.Span(extra.Gpa + 4096, payload.Length).ToArray());
    }
}
