using VhostUserVirtio.Interop;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The TAP uplink joins the host to the switch (needs root and /dev/net/tun, as CI has).</summary>
[Trait("tier", "unit")]
public sealed class UplinkTests
{
    [Fact]
    public void Frames_flow_between_a_member_and_the_host_through_the_tap_uplink()
    {
        string tap = "vuvt" + Guid.NewGuid().ToString("N")[..8];
        using var backend = new GroupBackend(vfs: 1, o => o with { Uplink = tap });
        using var vf1 = new NetFrontEnd(backend.Socket(1));
        vf1.PostRx(64);

        // Guest → host: the kernel counts frames written into the TAP as received on the interface.
        long before = ReadStat(tap, "rx_packets");
        vf1.Send(NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", "02:56:56:00:00:01", "hello host"));
        Assert.True(EchoBackend.WaitUntil(() => ReadStat(tap, "rx_packets") > before), "the host never saw the frame");

        // Host → guest: a frame sent out of the TAP interface on the host side reaches the member.
        var fromHost = NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", "52:54:00:00:00:99", "hello guest");
        using (var raw = PacketSocket.Open(int.Parse(File.ReadAllText($"/sys/class/net/{tap}/ifindex").Trim())))
            raw.Send(fromHost);
        bool arrived = false;
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (!arrived && DateTime.UtcNow < deadline)
            arrived = vf1.Receive(15_000).Frame.AsSpan().SequenceEqual(fromHost); // the kernel may send its own frames too
        Assert.True(arrived, "the host's frame did not reach the member");
        var status = backend.Group.Status();
        Assert.True(status.Ports.Single(p => p.Name.StartsWith("uplink:")).Counters.TxPackets > 0);
    }

    private static long ReadStat(string iface, string counter) =>
        long.Parse(File.ReadAllText($"/sys/class/net/{iface}/statistics/{counter}").Trim());
}
