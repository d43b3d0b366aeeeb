using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>virtio-net multiqueue: several queue pairs per device, any of them carrying traffic.</summary>
[Trait("tier", "unit")]
public sealed class MultiqueueTests
{
    [Fact]
    public void Every_transmit_queue_forwards_and_frames_land_in_an_enabled_receive_queue()
    {
        using var backend = new GroupBackend(vfs: 2, o => o with { QueuePairs = 2 });
        var options = new FrontEndSession.Options { QueueCount = 5 };  // rx0 tx0 rx1 tx1 ctrl
        using var a = FrontEndSession.Start(backend.Socket(1), options);
        using var b = FrontEndSession.Start(backend.Socket(2), options);
        Assert.True(VirtioFeature.Has(a.Features, VirtioNet.FMq));
        Assert.Equal(5UL, a.Connection.GetQueueNum());
        Assert.Equal(2, System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(a.Connection.GetConfig(VirtioNet.ConfigMaxPairs, 2)));

        foreach (int rx in new[] { 0, 2 })
            for (int i = 0; i < 4; i++)
            {
                ulong buf = b.Ram.Allocate(2048);
                b.Queues[rx].AddChain(new BufferSpec[] { new(buf, 2048, true) });
            }

        foreach (int tx in new[] { 1, 3 })
        {
            var frame = NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", "02:56:56:00:00:01", $"on tx queue {tx}");
            ulong f = a.Ram.Allocate((ulong)(12 + frame.Length));
            a.Ram.Span(f, 12).Clear();
            frame.CopyTo(a.Ram.Span(f + 12, frame.Length));
            a.Queues[tx].AddChain(new BufferSpec[] { new(f, (uint)(12 + frame.Length), false) });
            a.Queues[tx].Notify();
            a.Queues[tx].WaitUsed();
        }
        Assert.True(EchoBackend.WaitUntil(() => b.Queues[0].UsedIndex + b.Queues[2].UsedIndex == 2), "both frames should arrive");
        Assert.Equal(2, backend.Member(2).Device.Counters.RxPackets);
    }
}
