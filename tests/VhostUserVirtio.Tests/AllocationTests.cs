using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Regression guard for the data path's promise: once warm, popping, echoing and pushing chains
/// allocates nothing (a device's ProcessQueue "should not allocate"). Runs in one thread so
/// GC.GetAllocatedBytesForCurrentThread sees exactly the work under test.
/// </summary>
[Trait("tier", "unit")]
public sealed class AllocationTests
{
    private const int Chains = 256;
    private const int MeasuredBatches = 8;

    [Theory]
    [InlineData(64, true, false)]
    [InlineData(1500, true, false)]
    [InlineData(64, false, false)]
    [InlineData(64, true, true)]
    [InlineData(1500, false, true)]
    public void Device_side_pop_echo_push_allocates_nothing_once_warm(int payloadSize, bool eventIdx, bool packed)
    {
        using var ring = new InThreadEchoRing(Chains, payloadSize, eventIdx, packed);
        // Warm-up: JIT, static constructors, first-use growth of any pooled state.
        ring.RunBatch();
        ring.RunBatch();
        Assert.True(ring.EchoesMatch());

        long allocated = 0;
        int echoed = 0;
        for (int batch = 0; batch < MeasuredBatches; batch++)
        {
            ring.ClearDestinations();
            ring.Post();                       // driver side, outside the measured region
            long before = GC.GetAllocatedBytesForCurrentThread();
            echoed += ring.DeviceDrain();
            allocated += GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.Equal(Chains, ring.Reap());
            Assert.True(ring.EchoesMatch());
        }

        Assert.Equal(Chains * MeasuredBatches, echoed);
        Assert.Equal(0, allocated);
    }

    [Fact]
    public void Recording_into_an_inflight_region_allocates_nothing_once_warm()
    {
        using var ring = new InThreadEchoRing(Chains, 64);
        var split = (VhostUserVirtio.Queue.SplitQueue)ring.Device;
        using var region = VhostUserVirtio.Queue.InflightRegion.Create(1, split.Size);
        split.SyncUsedIndex();
        Assert.Null(split.AttachInflight(region.QueueRegion(0)));
        ring.RunBatch();
        ring.RunBatch();

        long allocated = 0;
        var perBatch = new long[MeasuredBatches];
        for (int batch = 0; batch < MeasuredBatches; batch++)
        {
            ring.ClearDestinations();
            ring.Post();
            long before = GC.GetAllocatedBytesForCurrentThread();
            int echoed = ring.DeviceDrain();
            perBatch[batch] = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.Equal(Chains, echoed);
            allocated += perBatch[batch];
            Assert.Equal(Chains, ring.Reap());
            Assert.True(ring.EchoesMatch());
        }

        Assert.True(allocated == 0, string.Join(",", perBatch));
        Assert.Empty(region.QueueRegion(0).InflightHeads()); // every chain recorded as completed
    }

    [Fact]
    public void Whole_in_thread_round_trip_including_driver_side_allocates_nothing_once_warm()
    {
        // What the SplitQueueEchoBenchmark measures: the MemoryDiagnoser column must read zero.
        using var ring = new InThreadEchoRing(Chains, 64);
        ring.RunBatch();
        ring.RunBatch();

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int batch = 0; batch < MeasuredBatches; batch++)
            ring.RunBatch();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocated);
        Assert.True(ring.EchoesMatch());
    }
}
