using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// DPDK virtio-user front ends with two queue pairs each (queues=2, --rxq/--txq 2) through a group
/// with two workers: both transmit rings of the source carry traffic, on different workers, and the
/// switch's counts agree exactly with what the front ends sent and received.
/// </summary>
[Collection(DpdkCollection.Name)]
[Trait("tier", "dpdk")]
public sealed class DpdkMultiqueueTests : IDisposable
{
    private static readonly TimeSpan RunTime = TimeSpan.FromSeconds(3);
    private const string SourceMac = "02:56:56:00:00:01", SinkMac = "02:56:56:00:00:02";

    private readonly ITestOutputHelper _log;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-dpdkmq-" + Guid.NewGuid().ToString("N")[..12]);

    public DpdkMultiqueueTests(ITestOutputHelper log)
    {
        _log = log;
        TestPmd.EnsureInstalled();
        Directory.CreateDirectory(_dir);
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void Two_queue_pairs_of_virtio_user_are_forwarded_by_two_workers_with_exact_counts()
    {
        using var backend = new GroupBackend(vfs: 2, o => o with { QueuePairs = 2 }, directory: _dir,
            memoryPolicy: new Memory.MemoryPolicy { AllowUnsealed = true }, workers: 2);
        string[] twoQueues = ["--rxq=2", "--txq=2"];
        using var sink = TestPmd.Start(new TestPmdOptions
        {
            Lcores = "0,1", MainLcore = 0,
            Vdevs = [TestPmd.VirtioUser(0, backend.Socket(2), mac: SinkMac, queues: 2)],
            ForwardMode = "rxonly",
            ExtraAppArgs = twoQueues,
        });
        using var source = TestPmd.Start(new TestPmdOptions
        {
            Lcores = "0,1", MainLcore = 1,
            Vdevs = [TestPmd.VirtioUser(0, backend.Socket(1), mac: SourceMac, queues: 2)],
            ForwardMode = "txonly",
            TxPacketLength = 64,
            EthPeers = [$"0,{SinkMac}"],
            ExtraAppArgs = twoQueues,
        });
        source.WaitForLinkUp(0);
        sink.WaitForLinkUp(0);
        sink.Start();
        source.Start();
        Thread.Sleep(RunTime);
        source.Stop();
        Thread.Sleep(500);
        sink.Stop();

        var sent = source.GetPortStats(0);
        var received = sink.GetPortStats(0);
        var ports = backend.Group.Status().Ports;
        var vf1 = ports.Single(p => p.Name == "vf1").Counters;
        var vf2 = ports.Single(p => p.Name == "vf2").Counters;
        var context = $"source {sent}, sink {received}, switch vf1 tx {vf1.TxPackets}, vf2 rx {vf2.RxPackets} (drops {string.Join(",", vf2.Drops)})";
        _log.WriteLine(context);

        var rings = backend.Member(1).Endpoint.Backend.Queues;
        Assert.True(rings[1].Ring.ChainsPopped > 0 && rings[3].Ring.ChainsPopped > 0,
            $"both transmit rings should carry traffic (tx0 {rings[1].Ring.ChainsPopped}, tx1 {rings[3].Ring.ChainsPopped}); " + context);
        Assert.NotSame(rings[1].Owner, rings[3].Owner);
        Assert.True(sent.TxPackets > 0 && received.RxPackets > 0, context);
        Assert.True(vf1.TxPackets == sent.TxPackets, "switch took " + context);
        Assert.True(vf2.RxPackets == received.RxPackets, "switch delivered " + context);
        Assert.True(source.Quit() && sink.Quit(), "testpmd did not quit on request");
    }
}
