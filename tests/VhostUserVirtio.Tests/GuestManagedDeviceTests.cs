using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A managed device created and driven only through the owner's transport queue (path 1 of
/// docs/owner-binding.md), its rings in a DMA window of the owner's memory and its interrupts MSI
/// writes there, talking IPv4 through the switch with a real Linux guest (QEMU, stock virtio-net
/// driver) on a VF: both ping each other.
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestManagedDeviceTests(ITestOutputHelper output) : IDisposable
{
    private const string GuestMac = "02:56:56:00:00:01"; // VF1's own: an untrusted VF may send only from it
    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-gm-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void A_device_driven_only_through_the_transport_queue_pings_a_linux_guest_on_a_vf_and_answers_its_pings()
    {
        using var backend = new GroupBackend(vfs: 1);
        using var owner = OwnerDriver.Connect(backend.Socket(0));
        var transport = owner.Transport!;
        uint id = transport.DevCreate();
        using var vdev = ManagedNetDriver.Start(owner, id);
        var host = new MiniHost(vdev.Mac, MiniHost.ParseIp("10.0.0.1"));
        output.WriteLine($"managed device {id} up: features 0x{vdev.Features:x}, mac {Convert.ToHexString(vdev.Mac)}, " +
            $"DMA window 0x{vdev.WindowStart:x}+0x{vdev.WindowSize:x}");

        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "managed-peer",
            Nics = [new GuestNic(backend.Socket(1), GuestMac)],
            TestScript = PingExchange.GuestScript(GuestMac, "10.0.0.2", "10.0.0.1"),
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        guest.WaitForBoot(TimeSpan.FromMinutes(3));
        guest.WaitForLine(PingExchange.GuestReadyMarker, TimeSpan.FromMinutes(2));

        string? guestResult = PingExchange.Run(guest, host, "10.0.0.2", vdev.Receive, f => vdev.Send(f), TimeSpan.FromMinutes(3));
        output.WriteLine($"managed device: {host.EchoRepliesSeen.Distinct().Count()}/5 echo replies from the guest, answered {host.EchoRequestsAnswered} " +
            $"echo requests; guest: {guestResult}; MSI data rx 0x{vdev.MsiData(0):x} tx 0x{vdev.MsiData(1):x}");

        Assert.True(host.EchoRepliesSeen.Distinct().Count() == 5, $"the guest answered {host.EchoRepliesSeen.Distinct().Count()} of 5 pings. {guest.Describe()}");
        Assert.True(guestResult == "GUEST-PING-RECEIVED 5", $"the guest's pings: {guestResult}. {guest.Describe()}");
        Assert.True(host.EchoRequestsAnswered >= 5);
        // Interrupts arrived as MSI writes into the owner's memory.
        Assert.Equal(0x100u, vdev.MsiData(0));
        Assert.Equal(0x101u, vdev.MsiData(1));
        // Everything went through the switch between the managed device and the VF.
        var ports = backend.Group.Status().Ports;
        Assert.True(ports.Single(p => p.Name == $"vdev{id}").Counters.TxPackets >= 11);
        Assert.True(ports.Single(p => p.Name == "vf1").Counters.TxPackets >= 11);
    }
}
