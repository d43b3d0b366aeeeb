using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Benchmarks;

/// <summary>
/// Guest address translation with 1, 8 and 509 regions (GET_MAX_MEM_SLOTS): a burst of addresses
/// in one region (what a ring's buffers mostly are: the last-hit hint answers), and addresses
/// spread over every region in a scrambled order (each lookup a binary search). Each lookup asks for a
/// 16-byte span, as a device does for a descriptor's buffer. The linear scan the table used before
/// is measured beside them (finding the region alone).
/// </summary>
[SimpleJob(RunStrategy.Throughput, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class GuestTranslationBenchmark
{
    private const int Burst = 64;
    private const ulong Page = 0x1000;

    [Params(1, 8, 509)]
    public int Regions { get; set; }

    private GuestMemoryTable _table = null!;
    private GuestMemory _memory = null!;
    private MemoryRegion[] _regions = null!;
    private ulong[] _sameRegion = null!, _spread = null!;

    [GlobalSetup]
    public void Setup()
    {
        using var file = MemFd.Create("bench", (long)((ulong)Regions * Page));
        _table = new GuestMemoryTable();
        for (int i = 0; i < Regions; i++)
            _table.Add(Gpa(i), Page, 0x7f00_0000_0000UL + (ulong)i * 0x10000, (ulong)i * Page, file.Duplicate());
        _memory = _table.Current;
        _regions = _memory.Regions.ToArray();
        _sameRegion = Enumerable.Range(0, Burst).Select(k => Gpa(Regions / 2) + (ulong)(k * 48 % 4000)).ToArray();
        _spread = Enumerable.Range(0, Burst).Select(k => Gpa(k * 193 % Regions) + (ulong)(k * 48 % 4000)).ToArray();
    }

    [GlobalCleanup]
    public void Cleanup() => _table.Dispose();

    private static ulong Gpa(int i) => 0x1_0000_0000UL + (ulong)i * 0x10000;

    [Benchmark(OperationsPerInvoke = Burst, Baseline = true)]
    public ulong SameRegion()
    {
        ulong sum = 0;
        foreach (ulong gpa in _sameRegion)
        {
            if (_memory.TryGetSpan(gpa, 16, out var span))
                sum += (uint)span.Length;
        }
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Burst)]
    public ulong SpreadOverAllRegions()
    {
        ulong sum = 0;
        foreach (ulong gpa in _spread)
        {
            if (_memory.TryGetSpan(gpa, 16, out var span))
                sum += (uint)span.Length;
        }
        return sum;
    }

    /// <summary>The former lookup (first region that contains the address), over the same spread addresses.</summary>
    [Benchmark(OperationsPerInvoke = Burst)]
    public ulong SpreadLinearScanFormerWay()
    {
        ulong sum = 0;
        var regions = _regions;
        foreach (ulong gpa in _spread)
        {
            for (int i = 0; i < regions.Length; i++)
            {
                var r = regions[i];
                ulong off = gpa - r.GuestPhysicalAddress;
                if (gpa >= r.GuestPhysicalAddress && off < r.Size)
                {
                    sum += off + (ulong)i;
                    break;
                }
            }
        }
        return sum;
    }
}
