using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Microsoft.Extensions.Logging.Abstractions;
using VhostUserVirtio.Backend;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group;

namespace VhostUserVirtio.Benchmarks;

/// <summary>
/// Managed devices through the owner's transport queue over a real vhost-user socket, in-process: one
/// DEV_CREATE followed by its DEV_DESTROY (socket bound and removed, device on the switch and off
/// again), as the owner driver sees it, waits on the queue's call descriptor included. The memory
/// per idle device is measured by <see cref="ManagedDeviceFootprint"/> (scripts/bench-vdev.sh).
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Throughput, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class ManagedDeviceBenchmark
{
    private string _directory = null!;
    private VhostUserServer _server = null!;
    private DeviceGroup _group = null!;
    private OwnerDriver _owner = null!;

    [GlobalSetup]
    public void Setup()
    {
        _directory = Path.Combine(Path.GetTempPath(), "vuv-bench-vdev-" + Guid.NewGuid().ToString("N")[..12]);
        _server = new VhostUserServer(NullLoggerFactory.Instance);
        _group = new DeviceGroup(_server, new DeviceGroupOptions { SocketDirectory = _directory, Vfs = 1 }, NullLoggerFactory.Instance);
        _group.Start();
        _owner = OwnerDriver.Connect(Path.Combine(_directory, "pf.sock"));
    }

    [Benchmark]
    public void CreateAndDestroy() => _owner.Transport!.DevDestroy(_owner.Transport.DevCreate());

    [GlobalCleanup]
    public void Cleanup()
    {
        _owner.Dispose();
        _group.Dispose();
        _server.Dispose();
        try { Directory.Delete(_directory, recursive: true); } catch (IOException) { }
    }
}

/// <summary>
/// What an idle managed device costs: a fresh group warms every create and destroy path (100 rounds,
/// so the JIT and the pools are done), then creates <c>count</c> devices through its transport queue;
/// the process's resident set (VmRSS, after a full GC) and the live managed heap before and after are
/// divided by the count. Create and destroy latencies of every device are summarised. One process per
/// measurement (scripts/bench-vdev.sh runs several): a heap grown by an earlier round would hide the cost.
/// </summary>
public static class ManagedDeviceFootprint
{
    public const string Header = "devices,rss_before_kib,rss_after_kib,rss_kib_per_device,heap_kib_per_device,create_median_ms,create_p99_ms,destroy_median_ms,destroy_p99_ms";

    public static void Run(int count)
    {
        string directory = Path.Combine(Path.GetTempPath(), "vuv-vdev-footprint-" + Guid.NewGuid().ToString("N")[..12]);
        try
        {
            using var server = new VhostUserServer(NullLoggerFactory.Instance);
            using var group = new DeviceGroup(server, new DeviceGroupOptions { SocketDirectory = directory, Vfs = 1, MaxManagedDevices = count },
                NullLoggerFactory.Instance);
            group.Start();
            using var owner = OwnerDriver.Connect(Path.Combine(directory, "pf.sock"));
            var transport = owner.Transport!;
            for (int i = 0; i < 100; i++)
                transport.DevDestroy(transport.DevCreate());
            var (rssBefore, heapBefore) = Settle();
            var create = new List<double>(count);
            var ids = new List<uint>(count);
            var clock = new Stopwatch();
            for (int i = 0; i < count; i++)
            {
                clock.Restart();
                ids.Add(transport.DevCreate());
                create.Add(clock.Elapsed.TotalMilliseconds);
            }
            var (rssAfter, heapAfter) = Settle();
            var destroy = new List<double>(count);
            foreach (var id in ids)
            {
                clock.Restart();
                transport.DevDestroy(id);
                destroy.Add(clock.Elapsed.TotalMilliseconds);
            }
            Console.WriteLine($"{count},{rssBefore},{rssAfter},{(rssAfter - rssBefore) / (double)count:0.0},{(heapAfter - heapBefore) / 1024.0 / count:0.0}," +
                $"{Percentile(create, 0.5):0.000},{Percentile(create, 0.99):0.000},{Percentile(destroy, 0.5):0.000},{Percentile(destroy, 0.99):0.000}");
        }
        finally
        {
            try { Directory.Delete(directory, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>VmRSS (KiB) and live managed bytes once the control loop has served the new sockets and the collector has run.</summary>
    private static (long RssKib, long HeapBytes) Settle()
    {
        Thread.Sleep(500);
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        long heap = GC.GetTotalMemory(forceFullCollection: true);
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        return (long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]), heap);
    }

    private static double Percentile(List<double> values, double p)
    {
        var sorted = values.Order().ToList();
        return sorted[(int)Math.Min(sorted.Count - 1, Math.Floor(p * sorted.Count))];
    }
}
