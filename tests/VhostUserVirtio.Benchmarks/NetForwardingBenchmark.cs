using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Benchmarks;

/// <summary>
/// Frames per second from VF1 to VF2 through the switch, over real vhost-user sockets in-process
/// (one data-path worker; the front ends run on the benchmark thread). Per operation: one batch sent
/// on VF1, all of it received on VF2, receive buffers reposted. Times are per frame; the allocation
/// column is process-wide.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Throughput, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class NetForwardingBenchmark
{
    public const int Batch = 128;
    private NetForwardingRig _rig = null!;

    [Params(64, 1518)]
    public int FrameSize { get; set; }

    [GlobalSetup]
    public void Setup() => _rig = new NetForwardingRig(Batch, FrameSize);

    [Benchmark(OperationsPerInvoke = Batch)]
    public void ForwardBatch() => _rig.ForwardBatch();

    [GlobalCleanup]
    public void Cleanup() => _rig.Dispose();
}
