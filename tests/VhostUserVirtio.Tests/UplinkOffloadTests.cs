using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The TAP uplink has no virtio-net header: offloaded frames reach it complete (needs root and /dev/net/tun).</summary>
[Trait("tier", "unit")]
public sealed class UplinkOffloadTests
{
    [Fact]
    public void A_tso_frame_for_the_tap_uplink_is_written_as_complete_segments()
    {
        string tap = "vuvo" + Guid.NewGuid().ToString("N")[..8];
        using var backend = new GroupBackend(vfs: 1, o => o with { Uplink = tap });
        using var vf1 = new NetFrontEnd(backend.Socket(1));

        long packets = ReadStat(tap, "rx_packets"), bytes = ReadStat(tap, "rx_bytes");
        // To a MAC nobody has: flooded, so the uplink gets it.
        var frame = TcpFrames.Build("02:00:00:00:00:77", "02:56:56:00:00:01", v6: false, payload: 4000);
        vf1.Send(frame, TcpFrames.Header(v6: false, 1448));

        Assert.True(EchoBackend.WaitUntil(() => ReadStat(tap, "rx_packets") - packets >= 3), "the host did not get three segments");
        Assert.Equal(3, ReadStat(tap, "rx_packets") - packets);
        Assert.Equal(3 * TcpFrames.HeadersLength(false) + 4000, ReadStat(tap, "rx_bytes") - bytes);
        var uplink = backend.Group.Status().Ports.Single(p => p.Name.StartsWith("uplink:", StringComparison.Ordinal)).Counters.Offloads!;
        Assert.Equal((1L, 3L, 0L), (uplink.FramesSegmented, uplink.SegmentsMade, uplink.PassedThrough));
    }

    private static long ReadStat(string iface, string counter) =>
        long.Parse(File.ReadAllText($"/sys/class/net/{iface}/statistics/{counter}").Trim());
}
