using System.Numerics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Microsoft.Extensions.Logging.Abstractions;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Benchmarks;

/// <summary>
/// The stages a forwarded frame passes through, each timed alone in one thread (per chain or per
/// frame): pop and validate a transmit chain, read its virtio-net and Ethernet headers, the switch
/// lookup, the copy into a receive chain, the used-element write and index publish, and the
/// notification decision. Everything here is in this core's cache, so these are the stages' own
/// instruction costs; the PVP loop adds the cache misses on lines the front end's core writes
/// (docs/performance.md puts the two side by side).
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Throughput, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class DataPathStageBenchmark
{
    public const int Chains = 32;          // one burst, as DPDK dequeues
    private const int NetHeader = 12;
    private static readonly Mac Tx = Mac.Parse("02:56:56:00:00:01"), Rx = Mac.Parse("02:56:56:00:00:02");

    private GuestRam _ram = null!;
    private GuestMemoryTable _table = null!;
    private DriverQueue _txDriver = null!, _rxDriver = null!;
    private SplitQueue _tx = null!, _rx = null!;
    private L2Switch _switch = null!;
    private CountingPort _txPort = null!, _rxPort = null!;
    private readonly byte[] _addresses = new byte[Frame.AddressesLength];
    private readonly byte[] _minimal = new byte[60];

    /// <summary>Ethernet frame size (the virtio-net header comes on top).</summary>
    [Params(64, 1518)]
    public int FrameSize { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        int queueSize = (int)BitOperations.RoundUpToPowerOf2(2 * Chains);
        _ram = new GuestRam(4 << 20);
        _txDriver = new DriverQueue(_ram, 1, queueSize) { EventIdx = true };
        _rxDriver = new DriverQueue(_ram, 0, queueSize) { EventIdx = true };
        var r = _ram.Regions[0];
        _table = new GuestMemoryTable();
        _table.Replace([(r.Gpa, r.Size, r.UserAddress, r.MmapOffset)], [r.Fd.Duplicate()]);
        _tx = Configure(_txDriver, queueSize);
        _rx = Configure(_rxDriver, queueSize);

        Rx.Write(_addresses);
        Tx.Write(_addresses.AsSpan(6));
        _addresses.CopyTo(_minimal, 0);
        for (int i = 0; i < Chains; i++)
        {
            // Transmit: header and frame in one readable buffer, as Linux and DPDK send them.
            ulong a = _ram.Allocate((ulong)(NetHeader + FrameSize), 64);
            var bytes = _ram.Span(a, NetHeader + FrameSize);
            bytes.Clear();
            _addresses.CopyTo(bytes[NetHeader..]);
            _txDriver.AddChain([new BufferSpec(a, (uint)(NetHeader + FrameSize), false)]);
            // Receive: one 2 KiB writable buffer each (mergeable-style).
            _rxDriver.AddChain([new BufferSpec(_ram.Allocate(2048, 64), 2048, true)]);
        }

        _switch = new L2Switch(NullLogger.Instance);
        _txPort = new CountingPort("tx");
        _rxPort = new CountingPort("rx");
        _switch.Attach(_txPort);
        _switch.Attach(_rxPort);
        // Both MACs learned, so the lookup below is the unicast path.
        Span<byte> learn = stackalloc byte[Frame.MinLength];
        learn.Clear();
        Mac.Broadcast.Write(learn);
        Rx.Write(learn[6..]);
        _switch.Forward(_rxPort, new Frame(learn));
        Tx.Write(learn[6..]);
        _switch.Forward(_txPort, new Frame(learn));
    }

    private SplitQueue Configure(DriverQueue driver, int size)
    {
        var q = new SplitQueue(size) { EventIdx = true };
        if (q.Configure(_table.Current, size, driver.DescriptorTable, driver.AvailableRing, driver.UsedRing) is { } error)
            throw new InvalidOperationException(error.Detail);
        return q;
    }

    /// <summary>Pop and validate (avail ring, descriptor copy, bounds, segment list), then give the burst back unconsumed.</summary>
    [Benchmark(OperationsPerInvoke = Chains)]
    public int PopValidate()
    {
        int n = 0;
        while (n < Chains && _tx.Pop() != null)
            n++;
        _tx.Rewind(n);
        return n;
    }

    /// <summary>Read the virtio-net header and the Ethernet addresses behind it (the transmit handler's one read).</summary>
    [Benchmark(OperationsPerInvoke = Chains)]
    public int ReadHeaders()
    {
        var chain = _tx.Pop()!;
        Span<byte> header = stackalloc byte[NetHeader + Frame.AddressesLength];
        int sum = 0;
        for (int i = 0; i < Chains; i++)
            sum += chain.Reader().Read(header);
        _tx.Rewind(1);
        return sum;
    }

    /// <summary>Learning the source and looking up the destination of a unicast frame (delivery itself only counts).</summary>
    [Benchmark(OperationsPerInvoke = Chains)]
    public long SwitchLookup()
    {
        var frame = new Frame(_minimal);
        for (int i = 0; i < Chains; i++)
            _switch.Forward(_txPort, frame);
        return _rxPort.Delivered;
    }

    /// <summary>Copy one frame from a transmit chain into a receive chain (the header first, as the receive path does).</summary>
    [Benchmark(OperationsPerInvoke = Chains)]
    public int CopyFrame()
    {
        var txChain = _tx.Pop()!;
        var frame = new Frame(txChain, NetHeader);
        var rxChain = _rx.Pop()!;
        Span<byte> header = stackalloc byte[NetHeader];
        header.Clear();
        int copied = 0;
        for (int i = 0; i < Chains; i++)
        {
            var writer = rxChain.Writer();
            writer.Write(header);
            var reader = frame.OpenReader();
            copied += reader.CopyTo(ref writer);
        }
        _tx.Rewind(1);
        _rx.Rewind(1);
        return copied;
    }

    /// <summary>Write a burst of used elements, then publish the used index once.</summary>
    [Benchmark(OperationsPerInvoke = Chains)]
    public ushort PushUsedBurst()
    {
        for (int i = 0; i < Chains; i++)
            _rx.PushUsed((ushort)i, 78, publish: false);
        _rx.PublishUsed();
        return _rx.NextUsed;
    }

    /// <summary>The notification decision after a burst (fence, EVENT_IDX used_event read).</summary>
    [Benchmark]
    public bool NotifyDecision() => _rx.NeedsNotification();

    [GlobalCleanup]
    public void Cleanup()
    {
        _table.Dispose();
        _txDriver.Dispose();
        _rxDriver.Dispose();
        _ram.Dispose();
    }

    /// <summary>A port that takes every frame and counts it: the switch's own cost, without a receive ring.</summary>
    private sealed class CountingPort(string name) : ISwitchPort
    {
        public string Name => name;
        public PortCounters Counters { get; } = new();
        public long Delivered { get; private set; }

        public bool Deliver(in Frame frame, Mac destination, out DropReason reason)
        {
            Delivered++;
            reason = default;
            return true;
        }

        public void FlushNotifications() { }
    }
}
