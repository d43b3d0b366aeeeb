using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// DPDK's virtio-user driver with packed rings (packed_vq=1) on both switch ports: a txonly front end
/// on VF1, an rxonly one on VF2, our group in between. Asserts the rings are packed and that every
/// frame sent went through the switch and every frame delivered was counted by the sink.
/// </summary>
[Collection(DpdkCollection.Name)]
[Trait("tier", "dpdk")]
public sealed class DpdkPackedRingTests : IDisposable
{
    private const string SourceMac = "02:56:56:00:00:01", SinkMac = "02:56:56:00:00:02";
    private readonly ITestOutputHelper _log;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-dpdk-" + Guid.NewGuid().ToString("N")[..12]);

    public DpdkPackedRingTests(ITestOutputHelper log)
    {
        _log = log;
        TestPmd.EnsureInstalled();
        Directory.CreateDirectory(_dir);
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Theory]
    [InlineData(64)]
    [InlineData(1518)]
    public void Virtio_user_with_packed_rings_forwards_through_the_group(int size)
    {
        using var sw = new InProcessGroupSwitch(_dir);
        using var sink = TestPmd.Start(new TestPmdOptions
        {
            Lcores = "0,1", MainLcore = 0,
            Vdevs = [TestPmd.VirtioUser(0, sw.Socket(1), mac: SinkMac, packed: true)],
            ForwardMode = "rxonly",
        });
        using var source = TestPmd.Start(new TestPmdOptions
        {
            Lcores = "0,1", MainLcore = 1,
            Vdevs = [TestPmd.VirtioUser(0, sw.Socket(0), mac: SourceMac, packed: true)],
            ForwardMode = "txonly",
            TxPacketLength = size,
            EthPeers = [$"0,{SinkMac}"],
        });
        source.WaitForLinkUp(0);
        sink.WaitForLinkUp(0);
        var members = new[] { sw.Backend.Member(1), sw.Backend.Member(2) };
        Assert.True(EchoBackend.WaitUntil(() => members.All(m => m.Endpoint.Backend.Queues[0].Started && m.Endpoint.Backend.Queues[1].Started)),
            "the front ends' rings did not start");
        Assert.All(members, m => Assert.True(m.Endpoint.Backend.Queues[1].Ring.IsPacked, $"{m.Name}'s rings are not packed"));

        sink.Start();
        source.Start();
        Thread.Sleep(TimeSpan.FromSeconds(3));
        source.Stop();
        Thread.Sleep(500);
        sink.Stop();

        var sent = source.GetPortStats(0);
        var received = sink.GetPortStats(0);
        var ports = sw.Backend.Group.Status().Ports;
        var vf1 = ports.Single(p => p.Name == "vf1").Counters;
        var vf2 = ports.Single(p => p.Name == "vf2").Counters;
        var context = $"source {sent}, sink {received}, switch vf1 tx {vf1.TxPackets}, vf2 rx {vf2.RxPackets} (drops {string.Join(",", vf2.Drops)})";
        _log.WriteLine(context);
        Assert.True(sent.TxPackets > 0 && received.RxPackets > 0, "nothing flowed; " + context);
        Assert.True(vf1.TxPackets == sent.TxPackets, "switch took " + context);
        Assert.True(vf2.RxPackets == received.RxPackets, "switch delivered " + context);
        Assert.Equal(0, received.RxErrors);
        Assert.All(members, m => Assert.Null(m.Endpoint.Backend.Queues[0].Ring.Fault));
        Assert.All(members, m => Assert.Null(m.Endpoint.Backend.Queues[1].Ring.Fault));
        Assert.True(source.Quit() && sink.Quit(), "testpmd did not quit on request");
    }
}
