using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Microsoft.Extensions.Logging.Abstractions;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Benchmarks;

/// <summary>
/// The switch's decision per frame (learning the source, looking up the destination, counting),
/// with ports that take frames without copying: a burst of one flow, where the per-worker cache
/// answers both lookups, against two flows interleaved frame by frame, where every lookup goes to
/// the table. The difference is what the cache saves per frame.
/// </summary>
[SimpleJob(RunStrategy.Throughput, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class SwitchLookupBenchmark
{
    public const int Burst = 32;
    private L2Switch _switch = null!;
    private CountingPort _a = null!, _b = null!;
    private byte[] _ab1 = null!, _ab2 = null!;

    [GlobalSetup]
    public void Setup()
    {
        _switch = new L2Switch(NullLogger.Instance);
        _a = new CountingPort("a");
        _b = new CountingPort("b");
        _switch.Attach(_a);
        _switch.Attach(_b);
        _switch.Attach(new CountingPort("c"));
        var a1 = Mac.Parse("02:00:00:00:00:a1");
        var a2 = Mac.Parse("02:00:00:00:00:a2");
        var b1 = Mac.Parse("02:00:00:00:00:b1");
        var b2 = Mac.Parse("02:00:00:00:00:b2");
        foreach (var (port, mac) in new[] { (_a, a1), (_a, a2), (_b, b1), (_b, b2) })
            _switch.Forward(port, new Frame(CountingPort.Ethernet(Mac.Broadcast, mac)));
        _ab1 = CountingPort.Ethernet(b1, a1);
        _ab2 = CountingPort.Ethernet(b2, a2);
    }

    [Benchmark(OperationsPerInvoke = Burst, Baseline = true)]
    public void OneFlow()
    {
        for (int i = 0; i < Burst; i++)
            _switch.Forward(_a, new Frame(_ab1));
        _switch.FlushNotifications();
    }

    [Benchmark(OperationsPerInvoke = Burst)]
    public void TwoFlowsInterleaved()
    {
        for (int i = 0; i < Burst; i++)
            _switch.Forward(_a, new Frame((i & 1) == 0 ? _ab1 : _ab2));
        _switch.FlushNotifications();
    }
}
