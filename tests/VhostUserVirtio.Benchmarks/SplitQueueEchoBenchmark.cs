using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Benchmarks;

/// <summary>
/// The pure data path in one thread, no sockets or eventfds: per operation the driver posts a batch
/// of chains, the device side pops, echoes and pushes each, the driver reaps them all. Times are per
/// chain (OperationsPerInvoke); the allocation column must read zero (see AllocationTests).
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Throughput, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class SplitQueueEchoBenchmark
{
    public const int Chains = 256;

    private InThreadEchoRing _ring = null!;

    /// <summary>Bytes in each chain's readable buffer (its writable buffer is the same size).</summary>
    [Params(64, 1500)]
    public int PayloadSize { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _ring = new InThreadEchoRing(Chains, PayloadSize);
        _ring.RunBatch();
        if (!_ring.EchoesMatch())
            throw new InvalidOperationException("echo produced wrong bytes");
    }

    [Benchmark(OperationsPerInvoke = Chains)]
    public int EchoBatch() => _ring.RunBatch();

    [GlobalCleanup]
    public void Cleanup() => _ring.Dispose();
}
