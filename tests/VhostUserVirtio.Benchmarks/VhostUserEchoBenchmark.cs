using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Microsoft.Extensions.Logging.Abstractions;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Echo;
using VhostUserVirtio.FrontEnd;

namespace VhostUserVirtio.Benchmarks;

/// <summary>
/// End to end over a real vhost-user socket: an in-process VhostUserServer with one EchoDevice (one
/// worker thread), a FrontEndSession on it. Per operation: post a batch, kick once, reap every used
/// element (waiting on the call eventfd when the ring is empty). Times are per chain and include the
/// kick/call wake-ups; the allocation column is process-wide (front end, worker and control loop).
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Throughput, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class VhostUserEchoBenchmark
{
    public const int Chains = 256;

    private string _directory = null!;
    private VhostUserServer _server = null!;
    private EchoDevice _device = null!;
    private FrontEndSession _session = null!;
    private DriverQueue _queue = null!;
    private BufferSpec[] _buffers = null!;

    [Params(64, 1500)]
    public int PayloadSize { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _directory = Path.Combine(Path.GetTempPath(), "vuv-bench-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(_directory);
        string socket = Path.Combine(_directory, "echo0.sock");
        // No logging on the data path: the null factory keeps log formatting out of the numbers.
        _server = new VhostUserServer(NullLoggerFactory.Instance, workerCount: 1);
        _device = new EchoDevice("echo0", queueCount: 1);
        _server.Serve(_device, socket);
        // Two descriptors per chain: the ring must hold 2 * Chains of them.
        _session = FrontEndSession.Start(socket, new FrontEndSession.Options
        {
            QueueCount = 1,
            QueueSize = 2 * Chains,
            RamSize = 8 << 20,
        });
        _queue = _session.Queues[0];

        var ram = _session.Ram;
        _buffers = new BufferSpec[2 * Chains];
        for (int i = 0; i < Chains; i++)
        {
            ulong src = ram.Allocate((ulong)PayloadSize, 64);
            ulong dst = ram.Allocate((ulong)PayloadSize, 64);
            ram.Span(src, PayloadSize).Fill((byte)i);
            _buffers[2 * i] = new BufferSpec(src, (uint)PayloadSize, Writable: false);
            _buffers[2 * i + 1] = new BufferSpec(dst, (uint)PayloadSize, Writable: true);
        }
        EchoBatch();
        for (int i = 0; i < Chains; i++)
            if (!ram.Span(_buffers[2 * i].Address, PayloadSize).SequenceEqual(ram.Span(_buffers[2 * i + 1].Address, PayloadSize)))
                throw new InvalidOperationException($"chain {i}: echo produced wrong bytes");
    }

    [Benchmark(OperationsPerInvoke = Chains)]
    public int EchoBatch()
    {
        var q = _queue;
        var buffers = _buffers.AsSpan();
        for (int i = 0; i < Chains; i++)
            q.AddChain(buffers.Slice(2 * i, 2));
        q.Notify();
        for (int i = 0; i < Chains; i++)
        {
            var (_, length) = q.WaitUsed();
            if (length != (uint)PayloadSize)
                throw new InvalidOperationException($"used length {length}, expected {PayloadSize}");
        }
        return Chains;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _session.Dispose();
        _server.Dispose();
        try { Directory.Delete(_directory, recursive: true); } catch (IOException) { }
    }
}
