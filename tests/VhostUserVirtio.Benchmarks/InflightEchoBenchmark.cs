using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Benchmarks;

/// <summary>
/// What inflight tracking (INFLIGHT_SHMFD) costs the data path: the in-thread split-ring echo of
/// <see cref="SplitQueueEchoBenchmark"/>, with and without an inflight region attached. Per chain
/// the region costs a counter and flag store at pop, a link store at push and a flag clear after
/// the publish.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Throughput, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class InflightEchoBenchmark
{
    public const int Chains = 256;

    private InThreadEchoRing _ring = null!;
    private InflightRegion? _region;

    [Params(false, true)]
    public bool Inflight { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _ring = new InThreadEchoRing(Chains, 64);
        if (Inflight)
        {
            var split = (SplitQueue)_ring.Device;
            _region = InflightRegion.Create(1, split.Size);
            split.SyncUsedIndex();
            if (split.AttachInflight(_region.QueueRegion(0)) is { } error)
                throw new InvalidOperationException(error.Detail);
        }
        _ring.RunBatch();
        if (!_ring.EchoesMatch())
            throw new InvalidOperationException("echo produced wrong bytes");
    }

    [Benchmark(OperationsPerInvoke = Chains)]
    public int EchoBatch() => _ring.RunBatch();

    [GlobalCleanup]
    public void Cleanup()
    {
        _ring.Dispose();
        _region?.Dispose();
    }
}
