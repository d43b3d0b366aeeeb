using VhostUserVirtio.Interop;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The TAP uplink carries frames as large as the devices' MTU (needs root and /dev/net/tun). The host
/// forwards nothing into an interface beyond its MTU: a bridge drops such a frame silently, so a TAP
/// left at 1500 behind jumbo-frame guests loses every large frame coming to them over a tunnel.
/// </summary>
[Trait("tier", "unit")]
public sealed class UplinkMtuTests
{
    private const int JumboMtu = 9000;

    [Fact]
    public void The_tap_uplink_takes_the_devices_mtu_so_a_jumbo_frame_from_the_host_reaches_a_member()
    {
        string tap = "vuvm" + Guid.NewGuid().ToString("N")[..8];
        using var backend = new GroupBackend(vfs: 1, o => o with { Uplink = tap, Mtu = JumboMtu });
        Assert.Equal(JumboMtu, int.Parse(File.ReadAllText($"/sys/class/net/{tap}/mtu").Trim()));

        using var vf1 = new NetFrontEnd(backend.Socket(1));
        vf1.PostRx(32);
        // A full-size frame as the host's stack would send it out of the TAP: header plus MTU.
        var jumbo = NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", "52:54:00:00:00:98", "jumbo", padTo: 14 + JumboMtu);
        using (var raw = PacketSocket.Open(int.Parse(File.ReadAllText($"/sys/class/net/{tap}/ifindex").Trim())))
            raw.Send(jumbo); // the kernel refuses (EMSGSIZE) a frame over the interface's MTU
        bool arrived = false;
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (!arrived && DateTime.UtcNow < deadline)
            arrived = vf1.Receive(15_000).Frame.AsSpan().SequenceEqual(jumbo); // the kernel may send its own frames too
        Assert.True(arrived, "the jumbo frame did not reach the member");
    }

    [Fact]
    public void A_device_mtu_larger_than_a_tap_can_have_leaves_the_tap_at_its_largest()
    {
        string tap = "vuvm" + Guid.NewGuid().ToString("N")[..8];
        using var backend = new GroupBackend(vfs: 1, o => o with { Uplink = tap, Mtu = 65535 });
        Assert.Equal(Devices.Switch.TapUplink.TapMaxMtu, int.Parse(File.ReadAllText($"/sys/class/net/{tap}/mtu").Trim()));
    }
}
