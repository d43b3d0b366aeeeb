using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A managed device's rings run on the group's home worker (its transport lives there), while a VF's
/// second queue pair runs on another worker: frames from that pair reach the managed device through
/// its shared receive ring, and its interrupt (an MSI write into the owner's memory) is still raised
/// by the home worker.
/// </summary>
[Trait("tier", "unit")]
public sealed class ManagedDeviceAcrossWorkersTests
{
    [Fact]
    public void Frames_from_another_workers_queue_pair_reach_a_managed_device_and_raise_its_msi()
    {
        using var backend = new GroupBackend(vfs: 2, o => o with { QueuePairs = MultiqueuePort.Pairs, MaxManagedDevices = 2 }, workers: 2);
        using var owner = OwnerDriver.Connect(backend.Socket(0));
        uint id = owner.Transport!.DevCreate();
        using var vf1 = new MultiqueuePort(backend.Socket(1));
        using var vdev = ManagedNetDriver.Start(owner, id);
        string vdevMac = Devices.Switch.Mac.Read(vdev.Mac).ToString();

        var vfRings = backend.Member(1).Endpoint.Backend.Queues;
        Assert.True(EchoBackend.WaitUntil(() => vfRings[3].Started), "vf1's second pair should start");
        Assert.NotSame(backend.Group.DataPath, vfRings[3].Owner);

        using var credits = new SemaphoreSlim(16);
        vf1.SendFrames(pair: 1, "vf1", vdevMac, count: 3, credits, CancellationToken.None);
        for (int i = 0; i < 3; i++)
        {
            var frame = vdev.Receive(15_000);
            Assert.NotNull(frame);
            Assert.Contains(MultiqueuePort.Payload("vf1", 1, i), System.Text.Encoding.ASCII.GetString(frame));
        }
        Assert.True(EchoBackend.WaitUntil(() => vdev.MsiData(0) == 0x100, 15_000), $"receive MSI data {vdev.MsiData(0):x}");
        var vdevRx = backend.Group.Transport!.Devices.Single().Backend.Queues[0];
        Assert.True(vdevRx.Gate.Shared, "the managed device's receive ring should have been filled by the other worker");
    }
}
