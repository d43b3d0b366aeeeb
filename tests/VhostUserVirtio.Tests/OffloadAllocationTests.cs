using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>Offloaded frames (passed through, checksummed or segmented in software) allocate nothing per frame on the worker.</summary>
[Trait("tier", "unit")]
public sealed class OffloadAllocationTests
{
    private const string A = "02:56:56:00:00:01", B = "02:56:56:00:00:02";

    [Theory]
    [InlineData(true, true)]   // TSO passed through
    [InlineData(true, false)]  // TSO segmented in software
    [InlineData(false, false)] // checksum completed in software
    public void Offloaded_frames_allocate_nothing_per_frame_on_the_worker(bool gso, bool receiverTakesOffloads)
    {
        ulong guestOffloads = VirtioFeature.Mask(VirtioNet.FGuestCsum) | VirtioFeature.Mask(VirtioNet.FGuestTso4) |
                              VirtioFeature.Mask(VirtioNet.FGuestTso6) | VirtioFeature.Mask(VirtioNet.FGuestEcn);
        using var backend = new GroupBackend(vfs: 2);
        using var vf1 = new NetFrontEnd(backend.Socket(1));
        using var vf2 = new NetFrontEnd(backend.Socket(2), receiverTakesOffloads ? ulong.MaxValue : ~guestOffloads);
        var frame = TcpFrames.Build(B, A, v6: false, payload: gso ? 8000 : 1000);
        var header = TcpFrames.Header(v6: false, gso ? (ushort)1448 : (ushort)0);
        // Used buffers per frame: 6 segments, or the whole frame over mergeable 2 KiB buffers.
        int perFrame = !gso ? 1 : receiverTakesOffloads ? (NetFrontEnd.HeaderSize + frame.Length + 2047) / 2048 : 6;

        // One transmit buffer, sent again and again; receive buffers given back as they come.
        ulong tx = vf1.Session.Ram.Allocate((ulong)(NetFrontEnd.HeaderSize + frame.Length), 64);
        header.CopyTo(vf1.Session.Ram.Span(tx, NetFrontEnd.HeaderSize));
        frame.CopyTo(vf1.Session.Ram.Span(tx + NetFrontEnd.HeaderSize, frame.Length));
        var txChain = new BufferSpec[] { new(tx, (uint)(NetFrontEnd.HeaderSize + frame.Length), false) };
        var buffers = new Dictionary<ushort, BufferSpec>();
        for (int i = 0; i < 64; i++)
        {
            var b = new BufferSpec(vf2.Session.Ram.Allocate(2048, 64), 2048, true);
            buffers[vf2.Rx.AddChain(new[] { b })] = b;
        }
        vf2.Rx.Notify();

        void Round()
        {
            vf1.Tx.AddChain(txChain);
            vf1.Tx.Notify();
            vf1.Tx.WaitUsed();
            for (int s = 0; s < perFrame; s++)
            {
                var (head, _) = vf2.Rx.WaitUsed();
                var b = buffers[head];
                buffers.Remove(head);
                buffers[vf2.Rx.AddChain(new[] { b })] = b;
            }
            vf2.Rx.Notify();
        }

        for (int i = 0; i < 4; i++)
            Round(); // warm up: JIT, the offload buffers made on first use
        var loop = backend.Group.DataPath.Loop;
        long before = loop.Invoke(() => GC.GetAllocatedBytesForCurrentThread());
        for (int i = 0; i < 40; i++)
            Round();
        long after = loop.Invoke(() => GC.GetAllocatedBytesForCurrentThread());

        Assert.True(after - before < 2048, $"the worker allocated {after - before} bytes over 40 offloaded frames");
        var c = backend.Member(2).Device.Counters;
        if (gso && !receiverTakesOffloads)
            Assert.Equal(44L * perFrame, c.SegmentsMade);
        Assert.Equal(44L, receiverTakesOffloads ? c.OffloadsPassedThrough : gso ? c.FramesSegmented : c.ChecksumsCompleted);
    }
}
