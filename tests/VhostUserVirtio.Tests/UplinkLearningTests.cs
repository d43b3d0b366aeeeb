using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The switch learns the stations behind the host's TAP uplink (needs root and /dev/net/tun). A guest
/// has a MAC or a few; behind the uplink may live a whole network, e.g. other hosts' guests over a
/// VXLAN tunnel (docs/multi-host.md), so the uplink is not held to one guest's share.
/// </summary>
[Trait("tier", "unit")]
public sealed class UplinkLearningTests
{
    private const int Stations = 200;

    [Fact]
    public void The_uplink_learns_more_stations_than_one_guest_port_may()
    {
        string tap = "vuvl" + Guid.NewGuid().ToString("N")[..8];
        using var backend = new GroupBackend(vfs: 1, o => o with { Uplink = tap });
        int perPort = backend.Group.Options.MaxMacsPerPort;
        Assert.True(Stations > perPort);
        string uplinkName = "uplink:" + tap;

        // Frames from the host side with as many source MACs, to a MAC nobody has.
        using (var raw = PacketSocket.Open(int.Parse(File.ReadAllText($"/sys/class/net/{tap}/ifindex").Trim())))
            for (int i = 0; i < Stations; i++)
                raw.Send(CountingPort.Ethernet(new Mac(0x02_00_00_00_00_00 + 0x100 + (ulong)i), new Mac(0x02_aa_00_00_00_00 + (ulong)i)));
        Assert.True(EchoBackend.WaitUntil(() => Uplink(backend, uplinkName).Counters.TxPackets >= Stations),
            "the switch did not take every frame from the uplink");

        var status = backend.Group.Status();
        var learned = status.MacTable.Where(e => e.Port == uplinkName && e.Mac.StartsWith("02:aa:", StringComparison.Ordinal)).ToList();
        Assert.Equal(Stations, learned.Count);
        Assert.Equal(0, Uplink(backend, uplinkName).Counters.MacsNotLearned);
        Assert.False(backend.Logs.HasWarning("learned MACs"), backend.Logs.Dump());
    }

    private static Group.PortStatus Uplink(GroupBackend backend, string name) =>
        backend.Group.Status().Ports.Single(p => p.Name == name);
}
