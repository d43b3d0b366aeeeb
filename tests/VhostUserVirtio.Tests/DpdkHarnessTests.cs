using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The harness end to end with DPDK on both sides: a txonly virtio-user front end on switch port 0,
/// an rxonly one on port 1, and a back end joining them (DPDK's vhost PMD, or ours in or out of process;
/// see <see cref="VhostSwitches.Names"/>).
/// </summary>
[Collection(DpdkCollection.Name)]
[Trait("tier", "dpdk")]
public sealed class DpdkHarnessTests : IDisposable
{
    private static readonly TimeSpan RunTime = TimeSpan.FromSeconds(3);
    // Our group's ports are VF1 and VF2: each front end uses its VF's own MAC (virtio-user's mac=
    // devarg, which txonly sends from), as an untrusted VF must.
    private const string SourceMac = "02:56:56:00:00:01", SinkMac = "02:56:56:00:00:02";

    private readonly ITestOutputHelper _log;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-dpdk-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();

    public DpdkHarnessTests(ITestOutputHelper log)
    {
        _log = log;
        TestPmd.EnsureInstalled();
        Directory.CreateDirectory(_dir);
    }

    private void Log(string line) => _log.WriteLine($"{_clock.Elapsed.TotalSeconds,6:0.0} s  {line}");

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Theory]
    [MemberData(nameof(VhostSwitches.Names), MemberType = typeof(VhostSwitches))]
    public void Txonly_front_end_reaches_rxonly_front_end_through_the_back_end(string backEnd)
    {
        using var sw = VhostSwitches.Create(backEnd, _dir);
        Log($"back end {sw.Name} up");

        // Forwarding lcores: the back end (DpdkVhostSwitch) polls on CPU 1, the sender on CPU 0 and
        // the receiver on CPU 1. Three pollers on two cores is slow, which is fine: no rates asserted.
        using var sink = TestPmd.Start(new TestPmdOptions
        {
            Lcores = "0,1", MainLcore = 0,
            Vdevs = [TestPmd.VirtioUser(0, sw.Socket(1), mac: SinkMac)],
            ForwardMode = "rxonly",
        });
        Log("sink started");
        using var source = TestPmd.Start(new TestPmdOptions
        {
            Lcores = "0,1", MainLcore = 1,
            Vdevs = [TestPmd.VirtioUser(0, sw.Socket(0), mac: SourceMac)],
            ForwardMode = "txonly",
            TxPacketLength = 64,
            EthPeers = [$"0,{SinkMac}"], // a learning switch floods it at first, then unicasts
        });

        Log("source started");
        sw.StartForwarding();
        source.WaitForLinkUp(0);
        sink.WaitForLinkUp(0);
        Log("all links up");
        sink.Start();
        source.Start();
        Thread.Sleep(RunTime);

        // Stop in flow order so nothing is counted by one side and not yet by the next.
        source.Stop();
        Thread.Sleep(500);
        sw.StopForwarding();
        sink.Stop();

        var sent = source.GetPortStats(0);
        var received = sink.GetPortStats(0);
        var context = $"{sw.Name}: source {sent}, sink {received}";
        Log(context);
        Assert.True(sent.TxPackets > 0, "the source sent nothing; " + context);
        Assert.True(received.RxPackets > 0, "the sink received nothing; " + context);
        Assert.True(received.RxPackets <= sent.TxPackets, "the sink received more than was sent; " + context);
        Assert.Equal(0, received.RxErrors);

        if (sw is DpdkVhostSwitch dpdk)
        {
            var inPort = dpdk.Pmd.GetPortStats(0);
            var outPort = dpdk.Pmd.GetPortStats(1);
            context += $", back end port 0 {inPort}, port 1 {outPort}";
            Assert.True(inPort.RxPackets > 0 && inPort.RxPackets <= sent.TxPackets, "back end received " + context);
            Assert.True(outPort.TxPackets > 0 && outPort.TxPackets <= inPort.RxPackets, "back end forwarded " + context);
            Assert.True(received.RxPackets <= outPort.TxPackets, "sink received more than forwarded; " + context);
        }

        if (sw is InProcessGroupSwitch group)
        {
            // Exact agreement: every frame the source put on vf1's ring went into the switch, and
            // every frame the switch put on vf2's ring was counted by the sink.
            var ports = group.Backend.Group.Status().Ports;
            var vf1 = ports.Single(p => p.Name == "vf1").Counters;
            var vf2 = ports.Single(p => p.Name == "vf2").Counters;
            context += $", switch vf1 tx {vf1.TxPackets}, vf2 rx {vf2.RxPackets} (drops {string.Join(",", vf2.Drops)})";
            Assert.True(vf1.TxPackets == sent.TxPackets, "switch took " + context);
            Assert.True(vf2.RxPackets == received.RxPackets, "switch delivered " + context);
        }

        Assert.True(source.Quit() && sink.Quit(), "testpmd did not quit on request");
        Log("front ends quit");
    }

    [Fact]
    public void TestPmd_leaves_no_runtime_directory_and_reports_link_state()
    {
        var socket = Path.Combine(_dir, "lonely.sock");
        string runtimeDir;
        using (var backEnd = TestPmd.Start(new TestPmdOptions { Vdevs = [TestPmd.Vhost(0, socket)] }))
        {
            runtimeDir = backEnd.RuntimeDirectory;
            Assert.True(Directory.Exists(runtimeDir), runtimeDir);
            Assert.True(File.Exists(socket), "the vhost PMD did not create its socket");
            Assert.False(backEnd.IsLinkUp(0)); // no front end yet
            Assert.Equal(0, backEnd.GetPortStats(0).RxPackets);
        }
        Assert.False(Directory.Exists(runtimeDir), runtimeDir + " left behind");
    }

    [Fact]
    public void Start_fails_with_testpmds_output_when_the_front_end_cannot_connect()
    {
        var missing = Path.Combine(_dir, "nobody-listens.sock");
        var e = Assert.Throws<InvalidOperationException>(() => TestPmd.Start(new TestPmdOptions
        {
            Vdevs = [TestPmd.VirtioUser(0, missing)],
            ForwardMode = "rxonly",
        }));
        Assert.Contains("did not probe", e.Message);
        Assert.Contains(missing, e.Message); // virtio-user names the socket it could not use
    }
}
