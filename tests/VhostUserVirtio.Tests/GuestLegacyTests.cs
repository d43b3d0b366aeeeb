using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A VF driven only through the owner's legacy admin commands, as a legacy virtio-net driver behind
/// virtio-vfio-pci would drive it, talking IPv4 through the switch with a real Linux guest (QEMU,
/// stock virtio-net driver) on another VF.
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestLegacyTests(ITestOutputHelper output) : IDisposable
{
    private const string GuestMac = "02:56:56:00:00:02"; // VF2's own: an untrusted VF may send only from it
    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-gl-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void A_vf_driven_only_through_legacy_admin_commands_pings_a_linux_guest_on_another_vf_and_answers_its_pings()
    {
        using var backend = new GroupBackend(vfs: 2);
        using var owner = OwnerDriver.Connect(backend.Socket(0));
        owner.UseAllCommands();
        using var legacy = LegacyNetDriver.Start(owner.Admin, 1, backend.Socket(1));
        var host = new MiniHost(legacy.Mac, MiniHost.ParseIp("10.0.0.1"));
        output.WriteLine($"legacy VF1 up: features 0x{legacy.GuestFeatures:x}, mac {Convert.ToHexString(legacy.Mac)}");

        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "legacy-peer",
            Nics = [new GuestNic(backend.Socket(2), GuestMac)],
            TestScript = PingExchange.GuestScript(GuestMac, "10.0.0.2", "10.0.0.1"),
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        guest.WaitForBoot(TimeSpan.FromMinutes(3));
        guest.WaitForLine(PingExchange.GuestReadyMarker, TimeSpan.FromMinutes(2));

        string? guestResult = PingExchange.Run(guest, host, "10.0.0.2", legacy.Receive, f => legacy.Send(f), TimeSpan.FromMinutes(3));
        output.WriteLine($"host: {host.EchoRepliesSeen.Distinct().Count()}/5 echo replies from the guest, answered {host.EchoRequestsAnswered} echo requests; guest: {guestResult}");

        Assert.True(host.EchoRepliesSeen.Distinct().Count() == 5, $"the guest answered {host.EchoRepliesSeen.Distinct().Count()} of 5 pings. {guest.Describe()}");
        Assert.True(guestResult == "GUEST-PING-RECEIVED 5", $"the guest's pings: {guestResult}. {guest.Describe()}");
        Assert.True(host.EchoRequestsAnswered >= 5);
        // Everything went through the switch between the two VFs.
        var ports = backend.Group.Status().Ports;
        Assert.True(ports.Single(p => p.Name == "vf1").Counters.TxPackets >= 11);
        Assert.True(ports.Single(p => p.Name == "vf2").Counters.TxPackets >= 11);
    }
}
