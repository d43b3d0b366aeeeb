using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Regression guard for the data path's promise: once warm, popping, echoing and pushing chains
/// allocates nothing (a device's ProcessQueue "should not allocate"). Runs in one thread so
/// GC.GetAllocatedBytesForCurrentThread sees exactly the work under test.
/// </summary>
public sealed class AllocationTests
{
    private const int Chains = 256;
    private const int MeasuredBatches = 8;

    [Theory]
    [InlineData(64, true)]
    [InlineData(1500, true)]
    [InlineData(64, false)]
    public void Device_side_pop_echo_push_allocates_nothing_once_warm(int payloadSize, bool eventIdx)
    {
        using var ring = new InThreadEchoRing(Chains, payloadSize, eventIdx);
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
