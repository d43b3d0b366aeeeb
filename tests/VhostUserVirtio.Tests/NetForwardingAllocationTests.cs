using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The net forwarding path (transmit ring → switch → receive ring) allocates nothing per frame.</summary>
[Trait("tier", "unit")]
public sealed class NetForwardingAllocationTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Forwarding_frames_through_the_switch_allocates_nothing_per_frame_on_the_worker(bool packed)
    {
        using var rig = new NetForwardingRig(batch: 128, frameSize: 64, packed: packed);
        for (int i = 0; i < 4; i++)
            rig.ForwardBatch(); // warm up: JIT, dictionary growth, first learnings

        var loop = rig.DataPath.Loop;
        long before = loop.Invoke(() => GC.GetAllocatedBytesForCurrentThread());
        for (int i = 0; i < 40; i++)
            rig.ForwardBatch();
        long after = loop.Invoke(() => GC.GetAllocatedBytesForCurrentThread());

        // 5120 frames: anything allocated per frame would show up as thousands of bytes. The two
        // Invoke calls themselves cost a few hundred bytes on the worker, whatever the frame count.
        long perFrame = (after - before) / (40 * 128);
        Assert.True(after - before < 2048, $"the worker allocated {after - before} bytes over 5120 frames ({perFrame} per frame)");
        Assert.Equal(44 * 128, rig.Group.Members[1].Device.Counters.RxPackets);
    }
}
