using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The packed ring's device side against a driver written by hand: chains popped with their buffer
/// ids, used descriptors written in bursts at the used position, both wrap counters, rewinding, the
/// vhost-user ring base, and the event suppression structures.
/// </summary>
[Trait("tier", "unit")]
public sealed class PackedQueueTests
{
    private const ushort W = PackedRing.DescWrite;

    [Fact]
    public void A_chain_is_popped_with_its_buffers_and_the_id_of_its_last_descriptor()
    {
        using var rig = new PackedRingRig(8);
        rig.Offer(5, [(PackedRingRig.Buffers, 100u, 0), (PackedRingRig.Buffers + 0x1000, 200u, W)]);
        var chain = rig.Queue.Pop();
        Assert.NotNull(chain);
        Assert.Equal(5, chain.Head);
        Assert.Equal((PackedRingRig.Buffers, 100u, false), (chain.Readable[0].Address, chain.Readable[0].Length, chain.Readable[0].Writable));
        Assert.Equal((PackedRingRig.Buffers + 0x1000, 200u, true), (chain.Writable[0].Address, chain.Writable[0].Length, chain.Writable[0].Writable));
        // Translated once, when the chain was validated: the copy uses these pointers.
        Assert.True(chain.Readable[0].Host != 0 && chain.Writable[0].Host != 0);
        Assert.Null(rig.Queue.Pop());
        Assert.Null(rig.Queue.Fault);
        Assert.Equal(2, rig.Queue.InFlightSlots);
    }

    [Fact]
    public void Used_descriptors_appear_only_when_the_burst_is_published_and_then_all_at_once()
    {
        using var rig = new PackedRingRig(8);
        for (ushort id = 0; id < 3; id++)
            rig.OfferOne(id);
        var q = rig.Queue;
        for (int i = 0; i < 3; i++)
        {
            var chain = q.Pop()!;
            q.PushUsed(chain.Head, 10u + chain.Head, publish: false);
        }
        for (int slot = 0; slot < 3; slot++)
            Assert.Null(rig.UsedAt(slot, wrap: true));
        q.PublishUsed();
        for (ushort slot = 0; slot < 3; slot++)
            Assert.Equal(((ushort Id, uint Length)?)(slot, 10u + slot), rig.UsedAt(slot, wrap: true));
        Assert.Equal(0, q.InFlightSlots);
    }

    [Fact]
    public void A_chain_of_several_descriptors_moves_the_used_position_by_its_descriptor_count()
    {
        using var rig = new PackedRingRig(8);
        rig.Offer(7, [(PackedRingRig.Buffers, 64u, W), (PackedRingRig.Buffers + 64, 64u, W), (PackedRingRig.Buffers + 128, 64u, W)]);
        rig.OfferOne(2);
        var q = rig.Queue;
        Assert.Equal(7, q.Pop()!.Head);
        Assert.Equal(2, q.Pop()!.Head);
        // Returned out of order: the used position counts descriptors, not ids.
        q.PushUsed(2, 1, publish: false);
        q.PushUsed(7, 3, publish: false);
        q.PublishUsed();
        Assert.Equal(((ushort, uint)?)(2, 1u), rig.UsedAt(0, wrap: true));
        Assert.Equal(((ushort, uint)?)(7, 3u), rig.UsedAt(1, wrap: true));
        Assert.Equal(4, q.NextUsed);
    }

    [Fact]
    public void The_ring_wraps_many_times_and_both_wrap_counters_follow()
    {
        using var rig = new PackedRingRig(4);
        var q = rig.Queue;
        for (int n = 0; n < 4 * 5 + 2; n++)
        {
            int usedSlot = rig.Slot;
            bool usedWrap = rig.Wrap;
            rig.OfferOne((ushort)(n % 3));
            var chain = q.Pop();
            Assert.NotNull(chain);
            Assert.Equal(n % 3, chain.Head);
            q.PushUsed(chain.Head, (uint)n);
            Assert.Equal(((ushort, uint)?)((ushort)(n % 3), (uint)n), rig.UsedAt(usedSlot, usedWrap));
        }
        // 22 chains of one descriptor in a ring of 4: slot 2, fifth lap passed (wrap counters flipped five times: 0).
        Assert.Equal(2u | 2u << 16, q.VringBase);
        Assert.False(q.AvailWrapCounter);
        Assert.False(q.UsedWrapCounter);
    }

    [Fact]
    public void Rewound_chains_are_popped_again_even_across_a_wrap()
    {
        using var rig = new PackedRingRig(4);
        var q = rig.Queue;
        for (ushort id = 0; id < 3; id++)
            rig.OfferOne(id);
        for (int i = 0; i < 3; i++)
            q.PushUsed(q.Pop()!.Head, 0);
        rig.OfferOne(0);  // slot 3
        rig.OfferOne(1);  // slot 0 of the next lap
        Assert.Equal(0, q.Pop()!.Head);
        Assert.Equal(1, q.Pop()!.Head);
        Assert.False(q.AvailWrapCounter);
        q.Rewind(2);
        Assert.Equal(3, q.NextAvail);
        Assert.True(q.AvailWrapCounter);
        Assert.Equal(0, q.InFlightSlots);
        Assert.Equal(0, q.Pop()!.Head);
        Assert.Equal(1, q.Pop()!.Head);
        Assert.Null(q.Fault);
    }

    [Fact]
    public void The_ring_base_carries_slot_and_wrap_counter_and_resumes_there()
    {
        using var rig = new PackedRingRig(8);
        var q = rig.Queue;
        Assert.Equal(0x8000_8000u, q.VringBase); // a fresh ring: slot 0 in the lap whose counters are 1
        Assert.Null(q.SetVringBase(0x0005)); // slot 5, wrap counter 0 (the upper half is not needed)
        Assert.Equal(0x0005_0005u, q.VringBase);
        Assert.False(q.AvailWrapCounter);
        Assert.Equal(RingErrorKind.InvalidSize, q.SetVringBase(0x8008)?.Kind);
    }

    [Fact]
    public void Driver_area_flags_decide_notifications_and_with_event_idx_the_offset_does()
    {
        using var rig = new PackedRingRig(8, eventIdx: true);
        var q = rig.Queue;
        void Use()
        {
            rig.OfferOne(0);
            q.PushUsed(q.Pop()!.Head, 0, publish: false);
        }
        Use();
        rig.WriteU16(PackedRingRig.DriverArea + 2, PackedRing.EventDisable);
        Assert.False(q.NeedsNotification());
        rig.WriteU16(PackedRingRig.DriverArea + 2, PackedRing.EventEnable);
        Use();
        Assert.True(q.NeedsNotification());
        // DESC: notify when the used position passes slot 4 of the first lap (it is at 2 now).
        rig.WriteU16(PackedRingRig.DriverArea, PackedRing.Pack(4, true));
        rig.WriteU16(PackedRingRig.DriverArea + 2, PackedRing.EventDesc);
        Use();
        Assert.False(q.NeedsNotification()); // used position 3
        Use();
        Assert.False(q.NeedsNotification()); // 4: the driver asked for the one after slot 4 is written
        Use();
        Assert.True(q.NeedsNotification());  // 5: slot 4 was used
        Use();
        Assert.False(q.NeedsNotification()); // passed once, not again
    }

    [Fact]
    public void Device_area_asks_for_kicks_at_the_next_avail_slot_with_event_idx_and_disables_them_without()
    {
        using (var rig = new PackedRingRig(8, eventIdx: true))
        {
            rig.OfferOne(0);
            rig.Queue.PushUsed(rig.Queue.Pop()!.Head, 0);
            Assert.False(rig.Queue.EnableNotification());
            Assert.Equal(PackedRing.EventDesc, rig.ReadU16(PackedRingRig.DeviceArea + 2));
            Assert.Equal(PackedRing.Pack(1, true), rig.ReadU16(PackedRingRig.DeviceArea));
            rig.OfferOne(1);
            Assert.True(rig.Queue.EnableNotification()); // a buffer arrived: the caller must keep going
        }
        using (var rig = new PackedRingRig(8))
        {
            rig.Queue.DisableNotification();
            Assert.Equal(PackedRing.EventDisable, rig.ReadU16(PackedRingRig.DeviceArea + 2));
            Assert.False(rig.Queue.EnableNotification());
            Assert.Equal(PackedRing.EventEnable, rig.ReadU16(PackedRingRig.DeviceArea + 2));
        }
    }

    [Fact]
    public void An_indirect_table_is_one_ring_slot_with_all_its_buffers()
    {
        using var rig = new PackedRingRig(8);
        const ulong table = 0x8_0000;
        rig.WriteDescriptorAt(table, PackedRingRig.Buffers, 12, 0, 0);
        rig.WriteDescriptorAt(table + 16, PackedRingRig.Buffers + 0x100, 1500, 0, W);
        rig.Offer(3, [(table, 32u, PackedRing.DescIndirect)]);
        var chain = rig.Queue.Pop()!;
        Assert.Equal(3, chain.Head);
        Assert.Equal((12u, 1500u), (chain.ReadableLength, chain.WritableLength));
        Assert.Equal(1, rig.Queue.InFlightSlots);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void While_logging_buffer_writes_are_marked_and_ring_writes_too_when_asked(bool logRing)
    {
        using var rig = new PackedRingRig(8);
        using var fd = MemFd.Create("log", 4096);
        using var log = DirtyLog.Map(fd.Duplicate(), 128, 0, allowUnsealed: false); // 1024 pages: the rig's 4 MiB
        var q = rig.Queue;
        q.SetDirtyLog(log, logRing ? PackedRingRig.DeviceArea : null);
        rig.OfferOne(0);
        var chain = q.Pop()!;
        var writer = chain.Writer();
        writer.Write(new byte[10]);
        q.PushUsed(chain.Head, writer.Written);
        q.DisableNotification();

        Assert.True(log.IsMarked(PackedRingRig.Buffers));
        Assert.Equal(logRing, log.IsMarked(PackedRingRig.Desc));        // the used descriptor
        Assert.Equal(logRing, log.IsMarked(PackedRingRig.DeviceArea));  // the device's event suppression
        Assert.False(log.IsMarked(0x20_0000)); // nothing else
    }
}
