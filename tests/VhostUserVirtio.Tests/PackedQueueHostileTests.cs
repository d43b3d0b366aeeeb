using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Packed rings no honest driver builds. Each breaks the ring with a typed fault: nothing is popped
/// or written afterwards, nothing outside guest memory is touched. (That a broken ring stays inside
/// its own device is <see cref="PackedRingIsolationTests"/>.)
/// </summary>
[Trait("tier", "unit")]
public sealed class PackedQueueHostileTests
{
    private const ushort W = PackedRing.DescWrite;
    private const ushort Ind = PackedRing.DescIndirect;
    private const ulong Table = 0x8_0000;

    private static void AssertBroken(PackedRingRig rig, RingErrorKind kind)
    {
        Assert.Null(rig.Queue.Pop());
        Assert.Equal(kind, rig.Queue.Fault?.Kind);
        Assert.False(rig.Queue.IsReady);
        // A broken ring writes nothing back.
        rig.Queue.PushUsed(0, 1);
        Assert.Null(rig.UsedAt(0, wrap: true));
    }

    [Fact]
    public void A_buffer_outside_guest_memory_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8);
        rig.Offer(0, [(0x4000_0000UL, 64u, W)]);
        AssertBroken(rig, RingErrorKind.BufferOutsideMemory);
    }

    [Fact]
    public void A_buffer_running_off_the_end_of_guest_memory_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8, memorySize: 0x40_0000);
        rig.Offer(0, [(0x40_0000UL - 16, 64u, W)]);
        AssertBroken(rig, RingErrorKind.BufferOutsideMemory);
    }

    [Fact]
    public void Lengths_adding_up_past_4_GiB_break_the_ring_instead_of_wrapping()
    {
        // 300 descriptors of 16 MiB over the same memory: 4.7 GiB readable.
        using var rig = new PackedRingRig(512, memorySize: 0x200_0000);
        var chain = new (ulong, uint, ushort)[300];
        for (int i = 0; i < chain.Length; i++)
            chain[i] = (0x100_0000UL, 0x100_0000u, 0);
        rig.Offer(0, chain);
        AssertBroken(rig, RingErrorKind.ChainTooLarge);
    }

    [Fact]
    public void A_chain_longer_than_the_ring_breaks_it()
    {
        using var rig = new PackedRingRig(8);
        // Every slot chained to the next, round and round: the driver's flags make all of them available.
        var chain = new (ulong, uint, ushort)[8];
        for (int i = 0; i < chain.Length; i++)
            chain[i] = (PackedRingRig.Buffers, 64u, 0);
        rig.Offer(0, chain);
        rig.WriteU16(rig.SlotAddress(7) + 14, (ushort)(PackedRing.DescNext | PackedRing.AvailableFlags(true)));
        AssertBroken(rig, RingErrorKind.ChainTooLong);
    }

    [Fact]
    public void An_indirect_table_larger_than_the_ring_breaks_it()
    {
        using var rig = new PackedRingRig(8);
        rig.Offer(0, [(Table, 16u * 9, Ind)]);
        AssertBroken(rig, RingErrorKind.IndirectTableLength);
    }

    [Fact]
    public void An_indirect_table_whose_length_is_not_a_multiple_of_16_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8);
        rig.WriteDescriptorAt(Table, PackedRingRig.Buffers, 64, 0, W);
        rig.Offer(0, [(Table, 24u, Ind)]);
        AssertBroken(rig, RingErrorKind.IndirectTableLength);
    }

    [Fact]
    public void An_empty_indirect_table_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8);
        rig.Offer(0, [(Table, 0u, Ind)]);
        AssertBroken(rig, RingErrorKind.IndirectTableLength);
    }

    [Fact]
    public void A_nested_indirect_table_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8);
        rig.WriteDescriptorAt(Table, PackedRingRig.Buffers, 64, 0, W);
        rig.WriteDescriptorAt(Table + 16, Table + 0x100, 16, 0, Ind);
        rig.Offer(0, [(Table, 32u, Ind)]);
        AssertBroken(rig, RingErrorKind.NestedIndirect);
    }

    [Fact]
    public void An_indirect_table_outside_guest_memory_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8);
        rig.Offer(0, [(0x40_0000UL - 16, 32u, Ind)]);
        AssertBroken(rig, RingErrorKind.IndirectTableOutsideMemory);
    }

    [Fact]
    public void An_indirect_buffer_outside_guest_memory_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8);
        rig.WriteDescriptorAt(Table, 0x4000_0000, 64, 0, W);
        rig.Offer(0, [(Table, 16u, Ind)]);
        AssertBroken(rig, RingErrorKind.BufferOutsideMemory);
    }

    [Fact]
    public void An_indirect_descriptor_with_next_set_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8);
        rig.WriteDescriptorAt(Table, PackedRingRig.Buffers, 64, 0, W);
        rig.Offer(0, [(Table, 16u, Ind), (PackedRingRig.Buffers, 64u, W)]);
        AssertBroken(rig, RingErrorKind.IndirectWithNext);
    }

    [Fact]
    public void An_indirect_descriptor_without_the_feature_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8, indirect: false);
        rig.WriteDescriptorAt(Table, PackedRingRig.Buffers, 64, 0, W);
        rig.Offer(0, [(Table, 16u, Ind)]);
        AssertBroken(rig, RingErrorKind.IndirectNotNegotiated);
    }

    [Fact]
    public void A_readable_buffer_after_a_writable_one_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8);
        rig.Offer(0, [(PackedRingRig.Buffers, 64u, W), (PackedRingRig.Buffers + 64, 64u, 0)]);
        AssertBroken(rig, RingErrorKind.ReadableAfterWritable);
    }

    [Fact]
    public void A_buffer_id_at_or_above_the_ring_size_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8);
        rig.Offer(8, [(PackedRingRig.Buffers, 64u, W)]);
        AssertBroken(rig, RingErrorKind.BufferIdOutOfRange);
    }

    [Fact]
    public void A_buffer_id_reused_while_in_flight_breaks_the_ring()
    {
        using var rig = new PackedRingRig(8);
        rig.OfferOne(3);
        rig.OfferOne(3);
        Assert.Equal(3, rig.Queue.Pop()!.Head);
        AssertBroken(rig, RingErrorKind.BufferIdInFlight);
    }

    [Fact]
    public void A_driver_reusing_slots_the_device_has_not_given_back_breaks_the_ring()
    {
        using var rig = new PackedRingRig(4);
        rig.Offer(0, [(PackedRingRig.Buffers, 64u, W), (PackedRingRig.Buffers, 64u, W), (PackedRingRig.Buffers, 64u, W)]);
        rig.OfferOne(1);
        Assert.NotNull(rig.Queue.Pop());
        Assert.NotNull(rig.Queue.Pop());
        // All four slots are in flight; the driver makes slot 0 available again in the next lap.
        rig.OfferOne(2);
        AssertBroken(rig, RingErrorKind.RingOverrun);
    }

    [Fact]
    public void Descriptors_marked_for_another_lap_are_not_taken_and_the_ring_stays_healthy()
    {
        using var rig = new PackedRingRig(8);
        // AVAIL = USED = 1 (looks used in this lap), then AVAIL = 0, USED = 1 (available in the next lap).
        rig.WriteDescriptorAt(rig.SlotAddress(0), PackedRingRig.Buffers, 64, 0, (ushort)(W | PackedRing.UsedFlags(true)));
        Assert.Null(rig.Queue.Pop());
        rig.WriteDescriptorAt(rig.SlotAddress(0), PackedRingRig.Buffers, 64, 0, (ushort)(W | PackedRing.AvailableFlags(false)));
        Assert.Null(rig.Queue.Pop());
        Assert.False(rig.Queue.HasPending);
        Assert.Null(rig.Queue.Fault);
        // The right lap's flags are then taken as usual.
        rig.OfferOne(0);
        Assert.Equal(0, rig.Queue.Pop()!.Head);
    }

    [Fact]
    public void A_ring_placed_partly_outside_memory_or_misaligned_is_refused()
    {
        using var rig = new PackedRingRig(8);
        var q = new PackedQueue(8);
        Assert.Equal(RingErrorKind.RingOutsideMemory, q.Configure(rig.Memory, new RingPlacement(8, 0x40_0000 - 64, PackedRingRig.DriverArea, PackedRingRig.DeviceArea))?.Kind);
        Assert.Equal(RingErrorKind.MisalignedRing, q.Configure(rig.Memory, new RingPlacement(8, PackedRingRig.Desc + 8, PackedRingRig.DriverArea, PackedRingRig.DeviceArea))?.Kind);
        Assert.Equal(RingErrorKind.MisalignedRing, q.Configure(rig.Memory, new RingPlacement(8, PackedRingRig.Desc, PackedRingRig.DriverArea + 2, PackedRingRig.DeviceArea))?.Kind);
        Assert.Equal(RingErrorKind.InvalidSize, q.Configure(rig.Memory, new RingPlacement(0, PackedRingRig.Desc, PackedRingRig.DriverArea, PackedRingRig.DeviceArea))?.Kind);
        Assert.False(q.IsReady);
        Assert.Null(q.Pop());
    }
}
