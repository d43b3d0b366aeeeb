using System.Buffers.Binary;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;

using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The inflight region (vhost-user "Inflight I/O tracking", split ring): its layout is the one
/// QEMU and libvhost-user share; a ring records what it takes and completes; a ring that resumes
/// from it (a new back end on the same guest memory) resubmits exactly the chains taken and not
/// completed, oldest first; and a region that does not add up is refused without harm.
/// </summary>
[Trait("tier", "unit")]
public sealed class InflightRegionTests : IDisposable
{
    private const int Size = SplitRingImage.Size;
    private const ulong Desc = SplitRingImage.Desc, Avail = SplitRingImage.Avail, Used = SplitRingImage.Used, Buffers = SplitRingImage.Buffers;
    private readonly SplitRingImage _ring = new("inflight");
    private readonly InflightRegion _region = InflightRegion.Create(2, Size);

    public InflightRegionTests()
    {
    }

    public void Dispose()
    {
        _region.Dispose();
        _ring.Dispose();
    }

    private InflightQueueRegion Q0 => _region.QueueRegion(0);

    /// <summary>A back end's ring over the test memory, recording into queue 0's region (what a restarted back end does).</summary>
    private SplitQueue StartRing(ushort nextAvail = 0, InflightQueueRegion? region = null)
    {
        var q = new SplitQueue(Size);
        Assert.Null(q.Configure(_ring.Memory, Size, Desc, Avail, Used));
        q.NextAvail = nextAvail;
        q.SyncUsedIndex();
        Assert.Null(q.AttachInflight(region ?? Q0));
        return q;
    }


    private static ushort PopHead(SplitQueue q) => q.Pop() is { } c ? c.Head : throw new Xunit.Sdk.XunitException($"nothing popped ({q.Fault})");

    [Fact]
    public void Region_sizes_and_field_offsets_are_the_ones_libvhost_user_and_QEMU_use()
    {
        // libvhost-user: ALIGN_UP(sizeof(VuDescStateSplit) * queue_size + sizeof(uint16_t), 64) per queue.
        Assert.Equal(64UL, InflightLayout.QueueRegionSize(1));
        Assert.Equal(4160UL, InflightLayout.QueueRegionSize(256));
        Assert.Equal(16UL * 1024 + 64, InflightLayout.QueueRegionSize(1024));
        Assert.Equal(2 * 320UL, InflightLayout.BufferSize(2, 16));
        Assert.Equal(InflightLayout.BufferSize(2, Size), _region.Size);
        Assert.Equal((long)_region.Size, _region.Descriptor.GetFileSize());

        for (ushort h = 0; h < 3; h++)
            _ring.Offer(h);
        var q = StartRing();
        PopHead(q);
        PopHead(q);
        PopHead(q);
        q.PushUsed(1, 8);

        // Read the second queue's neighbour and queue 0 through a separate mapping, byte by byte.
        using var view = MemoryMapping.Map(_region.Descriptor, _region.Size);
        var bytes = new byte[_region.Size];
        System.Runtime.InteropServices.Marshal.Copy(view.Address, bytes, 0, bytes.Length);
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(8)));      // version
        Assert.Equal(Size, BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(10)));  // desc_num
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(12)));     // last_batch_head
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(14)));     // used_idx
        Assert.Equal(1, bytes[16 + 0]);                                                 // desc[0].inflight
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16 + 8))); // desc[0].counter
        Assert.Equal(0, bytes[16 + 16]);                                                // desc[1] completed
        Assert.Equal(1, bytes[16 + 32]);
        Assert.Equal(2UL, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16 + 32 + 8)));
        Assert.All(bytes[(int)InflightLayout.QueueRegionSize(Size)..], b => Assert.Equal(0, b)); // queue 1 untouched
    }

    [Fact]
    public void Chains_taken_and_not_completed_are_resubmitted_once_oldest_first_before_new_ones()
    {
        foreach (ushort h in new ushort[] { 5, 2, 9, 7 })
            _ring.Offer(h);
        var before = StartRing();
        Assert.Equal(5, PopHead(before));
        Assert.Equal(2, PopHead(before));
        Assert.Equal(9, PopHead(before));
        before.PushUsed(2, 8);     // completed and published
        before.PushUsed(9, 8, publish: false); // its work done and its used element written, not published
        // The back end dies here. A new one resumes from the region over the same guest memory.
        _ring.Offer(11);

        var after = StartRing(nextAvail: 0); // the front end's base is not what counts: the region is
        // 9's work was done: it is published as it was written, not done again.
        Assert.Equal(2, _ring.UsedIndex);
        Assert.Equal(1, after.ResubmitPending);
        Assert.Equal(3, after.NextAvail);    // used 2 + in flight 1
        Assert.Equal(5, PopHead(after));
        Assert.Equal(7, PopHead(after));     // then the avail ring, from where the dead one stopped
        Assert.Equal(11, PopHead(after));
        Assert.Null(after.Pop());
        foreach (ushort h in new ushort[] { 5, 7, 11 })
            after.PushUsed(h, 8, publish: false);
        after.PublishUsed();
        Assert.Equal(5, _ring.UsedIndex);          // five chains offered, five completed, none twice
        Assert.Empty(Q0.InflightHeads());

        // Resuming again finds nothing to resubmit.
        var again = StartRing();
        Assert.Equal(0, again.ResubmitPending);
        Assert.Equal(5, again.NextAvail);
        Assert.Null(again.Pop());
    }

    [Fact]
    public void Used_elements_written_but_not_published_are_resubmitted_when_the_used_ring_does_not_hold_them()
    {
        foreach (ushort h in new ushort[] { 5, 2 })
            _ring.Offer(h);
        var before = StartRing();
        Assert.Equal(5, PopHead(before));
        Assert.Equal(2, PopHead(before));
        before.PushUsed(2, 8, publish: false);
        // Someone overwrote the element the region says was written: nothing is published on its word.
        Assert.True(_ring.Memory.Write(Used + 4, [0x7f, 0, 0, 0]));

        var after = StartRing();
        Assert.Equal(0, _ring.UsedIndex);
        Assert.Equal(2, after.ResubmitPending);
        Assert.Equal(5, PopHead(after));
        Assert.Equal(2, PopHead(after));
    }

    [Fact]
    public void A_batch_published_to_the_used_ring_but_not_recorded_is_not_resubmitted()
    {
        foreach (ushort h in new ushort[] { 3, 4, 6 })
            _ring.Offer(h);
        var before = StartRing();
        PopHead(before);
        PopHead(before);
        PopHead(before);
        before.PushUsed(4, 8, publish: false);
        before.PushUsed(3, 8, publish: false);
        before.PublishUsed();
        // Rewind the region to the instant between the used-index store and its recording.
        Assert.Equal(4, Q0.LastBatchHead);
        Assert.Equal(3, Q0.NextOf(4));
        Q0.WriteDescState(4, 1, Q0.NextOf(4), Q0.CounterOf(4));
        Q0.WriteDescState(3, 1, Q0.NextOf(3), Q0.CounterOf(3));
        Q0.WriteHeader(0, 1, Size, 4, 0);

        var after = StartRing();
        Assert.Equal(2, Q0.UsedIdx);
        Assert.Equal(new[] { 6 }, Q0.InflightHeads());
        Assert.Equal(1, after.ResubmitPending);
        Assert.Equal(3, after.NextAvail);
        Assert.Equal(6, PopHead(after));
        Assert.Null(after.Pop());
    }

    [Fact]
    public void A_fresh_region_keeps_the_rings_position_and_takes_its_used_index()
    {
        for (ushort h = 0; h < 4; h++)
            _ring.Offer(h);
        _ring.WriteU16(Used + 2, 3); // a ring with history (three chains completed before the region came)
        var q = StartRing(nextAvail: 3);
        Assert.Equal(1, Q0.Version);
        Assert.Equal(Size, Q0.DescNum);
        Assert.Equal(3, Q0.UsedIdx);
        Assert.Equal(0, q.ResubmitPending);
        Assert.Equal(3, PopHead(q));
        // Killed now: the resumed ring takes chain 3 again and nothing the driver got back before.
        var after = StartRing(nextAvail: 0);
        Assert.Equal(4, after.NextAvail);
        Assert.Equal(3, PopHead(after));
        Assert.Null(after.Pop());
    }

    [Fact]
    public void A_rewound_chain_is_no_longer_in_flight_and_a_rewound_resubmission_comes_again()
    {
        _ring.Offer(1);
        _ring.Offer(2);
        var q = StartRing();
        PopHead(q);
        PopHead(q);
        q.Rewind(1);
        Assert.Equal(new[] { 1 }, Q0.InflightHeads());

        var after = StartRing();
        Assert.Equal(1, PopHead(after));  // resubmitted
        Assert.Equal(2, PopHead(after));  // from the avail ring
        after.Rewind(2);                  // both back: the avail one released, the resubmitted one kept
        Assert.Equal(new[] { 1 }, Q0.InflightHeads());
        Assert.Equal(1, PopHead(after));
        Assert.Equal(2, PopHead(after));
        Assert.Null(after.Pop());
    }

    public enum Damage { Version, DescNum, Flag, BatchHead, BatchTooLarge, BatchRepeats, SameCounter, MaxCounter, RingLargerThanRegion }

    [Theory]
    [InlineData(Damage.Version)]
    [InlineData(Damage.DescNum)]
    [InlineData(Damage.Flag)]
    [InlineData(Damage.BatchHead)]
    [InlineData(Damage.BatchTooLarge)]
    [InlineData(Damage.BatchRepeats)]
    [InlineData(Damage.SameCounter)]
    [InlineData(Damage.MaxCounter)]
    [InlineData(Damage.RingLargerThanRegion)]
    public void A_region_that_does_not_add_up_breaks_only_that_ring_and_is_left_unchanged(Damage damage)
    {
        using var small = InflightRegion.Create(1, Size / 2);
        var region = damage == Damage.RingLargerThanRegion ? small.QueueRegion(0) : Q0;
        region.WriteHeader(0, 1, (ushort)region.Capacity, 0, 0);
        region.WriteDescState(1, 1, 0, 10);
        region.WriteDescState(2, 1, 0, 11);
        switch (damage)
        {
            case Damage.Version: region.WriteHeader(0, 2, Size, 0, 0); break;
            case Damage.DescNum: region.WriteHeader(0, 1, Size / 2, 0, 0); break;
            case Damage.Flag: region.WriteDescState(3, 7, 0, 12); break;
            case Damage.BatchHead: region.WriteHeader(0, 1, Size, 60000, 0); _ring.WriteU16(Used + 2, 1); break;
            case Damage.BatchTooLarge: _ring.WriteU16(Used + 2, Size + 1); break;
            case Damage.BatchRepeats: region.WriteDescState(0, 0, 0, 0); _ring.WriteU16(Used + 2, 2); break; // 0 → next 0 → 0
            case Damage.SameCounter: region.WriteDescState(2, 1, 0, 10); break;
            case Damage.MaxCounter: region.WriteDescState(2, 1, 0, ulong.MaxValue); break;
        }
        using var view = MemoryMapping.Map(region.Owner.Descriptor, region.Owner.Size);
        byte[] before = Snapshot(view, region.Owner.Size);

        var q = new SplitQueue(Size);
        Assert.Null(q.Configure(_ring.Memory, Size, Desc, Avail, Used));
        q.SyncUsedIndex();
        var error = q.AttachInflight(region);

        Assert.Equal(RingErrorKind.InflightRegionCorrupt, error?.Kind);
        Assert.Equal(RingErrorKind.InflightRegionCorrupt, q.Fault?.Kind);
        Assert.StartsWith("inflight region: ", error!.Value.Detail);
        Assert.Null(q.Inflight);
        Assert.Null(q.Pop());
        Assert.Equal(before, Snapshot(view, region.Owner.Size));
    }

    private static byte[] Snapshot(MemoryMapping view, ulong size)
    {
        var bytes = new byte[size];
        System.Runtime.InteropServices.Marshal.Copy(view.Address, bytes, 0, bytes.Length);
        return bytes;
    }

    public enum Lie { FileTooSmall, OffsetPastEnd, SizeTooSmall, TooManyQueues, QueueSizeZero, QueueSizeTooLarge, OffsetOverflow, NotSealable }

    [Theory]
    [InlineData(Lie.FileTooSmall)]
    [InlineData(Lie.OffsetPastEnd)]
    [InlineData(Lie.SizeTooSmall)]
    [InlineData(Lie.TooManyQueues)]
    [InlineData(Lie.QueueSizeZero)]
    [InlineData(Lie.QueueSizeTooLarge)]
    [InlineData(Lie.OffsetOverflow)]
    [InlineData(Lie.NotSealable)]
    public void Opening_a_handed_over_buffer_that_lies_about_its_geometry_is_refused(Lie lie)
    {
        ulong size = InflightLayout.BufferSize(2, Size);
        var fd = MemFd.Create("inflight-lie", lie == Lie.FileTooSmall ? (long)size - 1 : (long)size, allowSealing: lie != Lie.NotSealable);
        var probe = fd.Duplicate();
        try
        {
            var e = Assert.Throws<GuestMemoryException>(() => lie switch
            {
                Lie.OffsetPastEnd => InflightRegion.Open(fd, size, 4096, 2, Size, maxQueues: 2),
                Lie.SizeTooSmall => InflightRegion.Open(fd, size - 1, 0, 2, Size, maxQueues: 2),
                Lie.TooManyQueues => InflightRegion.Open(fd, size, 0, 2, Size, maxQueues: 1),
                Lie.QueueSizeZero => InflightRegion.Open(fd, size, 0, 2, 0, maxQueues: 2),
                Lie.QueueSizeTooLarge => InflightRegion.Open(fd, size, 0, 2, Size, maxQueues: 2, maxQueueSize: Size / 2),
                Lie.OffsetOverflow => InflightRegion.Open(fd, size, ulong.MaxValue - 10, 2, Size, maxQueues: 2),
                _ => InflightRegion.Open(fd, size, 0, 2, Size, maxQueues: 2),
            });
            Assert.Contains("inflight buffer", e.Message);
            Assert.True(fd.IsClosed); // taken and closed on refusal
        }
        finally
        {
            probe.Dispose();
        }
    }

    [Fact]
    public void A_buffer_handed_over_at_an_offset_is_read_from_that_offset()
    {
        ulong size = InflightLayout.BufferSize(1, Size);
        var fd = MemFd.Create("inflight-offset", 4096 + (long)size);
        using (var writer = InflightRegion.Open(fd.Duplicate(), size, 4096, 1, Size))
            writer.QueueRegion(0).WriteHeader(0, 1, Size, 0, 0);
        using var reader = InflightRegion.Open(fd, size, 4096, 1, Size);
        Assert.Equal(1, reader.QueueRegion(0).Version);
        Assert.Equal(Size, reader.QueueRegion(0).DescNum);
    }
}
