using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A front end that sets its rings up and its driver running but never sends guest memory (QEMU whose
/// guest RAM is not shared): legal for a while, so not refused, but never silent.
/// </summary>
[Trait("tier", "unit")]
public sealed class RingsWithoutMemoryTests : IDisposable
{
    private readonly EchoBackend _backend = new(devices: 1);

    public void Dispose() => _backend.Dispose();

    /// <summary>SET_OWNER, features, then ring 0 (size, base, addresses, call, kick) with no memory table.</summary>
    private static (VhostUserFrontEnd Fe, GuestRam Ram, DriverQueue Queue) RingsWithoutMemory(string socket)
    {
        var fe = VhostUserFrontEnd.Connect(socket);
        ulong features = fe.GetFeatures() & ~VirtioFeature.Mask(VirtioFeature.VhostLogAll) & ~VirtioFeature.Mask(VirtioFeature.RingPacked);
        fe.SetProtocolFeatures(fe.GetProtocolFeatures());
        fe.SetOwner();
        fe.SetFeatures(features);
        var ram = new GuestRam(16 << 20);
        var queue = new DriverQueue(ram, 0, 256);
        queue.Configure(fe);
        fe.SetVringEnable(0, true);
        return (fe, ram, queue);
    }

    [Fact]
    public void A_ring_ready_but_without_guest_memory_is_warned_about()
    {
        var (fe, ram, queue) = RingsWithoutMemory(_backend.SocketPath(0));
        using (fe) using (ram) using (queue)
        {
            Assert.True(_backend.Logs.WaitForWarning("no guest memory"), _backend.Logs.Dump());
            Assert.Contains(_backend.Logs.Lines, l => l.Text.Contains("<access mode='shared'/>", StringComparison.Ordinal));
            Assert.Equal(1, _backend.Endpoints[0].Backend.RingsWaitingForMemory);
        }
    }

    [Fact]
    public void Driver_ok_over_rings_without_guest_memory_is_warned_about()
    {
        var (fe, ram, queue) = RingsWithoutMemory(_backend.SocketPath(0));
        using (fe) using (ram) using (queue)
        {
            Assert.True((fe.Negotiated & ProtocolFeatures.Status) != 0, "the back end offers STATUS");
            fe.SetStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk);
            Assert.True(_backend.Logs.WaitForWarning("set DRIVER_OK but 1 ring(s) have no guest memory"), _backend.Logs.Dump());
        }
    }

    [Fact]
    public void Repeated_ring_setup_without_memory_is_logged_once()
    {
        var (fe, ram, queue) = RingsWithoutMemory(_backend.SocketPath(0));
        using (fe) using (ram) using (queue)
        {
            Assert.True(_backend.Logs.WaitForWarning("no guest memory"), _backend.Logs.Dump());
            for (int i = 0; i < 20; i++)
                fe.SetVringKick(0, queue.Kick);
            fe.GetFeatures(); // a reply: every kick before it was handled
            Assert.Single(_backend.Logs.Lines, l => l.Text.Contains("is ready but the front end has sent no guest memory", StringComparison.Ordinal));
        }
    }

    [Fact]
    public void A_ring_set_up_before_its_memory_starts_when_the_memory_comes()
    {
        var (fe, ram, queue) = RingsWithoutMemory(_backend.SocketPath(0));
        using (fe) using (ram) using (queue)
        {
            fe.SetMemTable(ram);
            Assert.True(EchoBackend.WaitUntil(() => _backend.Endpoints[0].Backend.RingsWaitingForMemory == 0), "ring 0 still waits for memory");
            var payload = Echo.Text("memory came late");
            ulong src = ram.Allocate((ulong)payload.Length), dst = ram.Allocate((ulong)payload.Length);
            payload.CopyTo(ram.Span(src, payload.Length));
            ushort head = queue.AddChain([new BufferSpec(src, (uint)payload.Length, false), new BufferSpec(dst, (uint)payload.Length, true)]);
            queue.Notify();
            Assert.Equal(head, queue.WaitUsed().Id);
            Assert.Equal(payload, ram.Span(dst, payload.Length).ToArray());
        }
    }
}
