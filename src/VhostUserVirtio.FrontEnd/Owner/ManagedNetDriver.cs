using System.Buffers.Binary;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.FrontEnd.Owner;

/// <summary>
/// A virtio-net driver for a managed device driven entirely through the owner's transport queue
/// (docs/owner-binding.md "Transport virtqueue and managed devices"), the way a PF driver would run a
/// SIOV device on behalf of a guest: a DMA window in the owner's memory holds the rings and buffers,
/// MSI vectors point at words of the owner's memory outside every window, and NOTIFY is the doorbell.
/// Brings the device up with the modern sequence (reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK,
/// queues, DRIVER_OK), then sends and receives frames with the 12-byte header.
/// </summary>
public sealed class ManagedNetDriver : IDisposable
{
    public const ushort ReceiveQueue = 0, TransmitQueue = 1;
    /// <summary>struct virtio_net_hdr with num_buffers (VERSION_1).</summary>
    public const int HeaderSize = 12;
    private const int BufferSize = 2048;
    private const byte Acknowledge = 1, Driver = 2, DriverOk = 4, FeaturesOk = 8;
    /// <summary>Project command 1.5: a managed device's DMA window.</summary>

    private readonly TransportQueueClient _transport;
    private readonly RamArena _window;
    private readonly ulong _msi;
    private readonly Dictionary<ushort, ulong> _rxBuffers = new();
    private readonly Queue<ulong> _txBuffers = new();

    private ManagedNetDriver(TransportQueueClient transport, ulong id, RamArena window, ulong msi)
    {
        _transport = transport;
        Id = id;
        _window = window;
        _msi = msi;
    }

    public ulong Id { get; }
    public DriverQueue Rx { get; private set; } = null!;
    public DriverQueue Tx { get; private set; } = null!;
    public ulong Features { get; private set; }
    public ulong WindowStart => _window.Start;
    public ulong WindowSize => _window.Size;

    /// <summary>The MAC in the device's config space.</summary>
    public byte[] Mac => _transport.CfgRead(Id, 0, 6);

    /// <param name="id">The managed device to drive (DEV_CREATE it first).</param>
    /// <param name="windowSize">Bytes of the owner's memory to give the device as its DMA window.</param>
    public static ManagedNetDriver Start(OwnerDriver owner, ulong id, int receiveBuffers = 64, ulong windowSize = 1 << 20)
    {
        var transport = owner.Transport ?? throw new FrontEndException("the owner has no transport queue");
        var ram = owner.Session.Ram;
        var window = new RamArena(ram, windowSize);
        // MSI targets: one word per vector, in the owner's memory but outside the window.
        ulong msi = ram.Allocate(64, 64);
        ram.Span(msi, 64).Clear();
        var driver = new ManagedNetDriver(transport, id, window, msi);
        driver.BringUp(receiveBuffers);
        return driver;
    }

    private void BringUp(int receiveBuffers)
    {
        var t = _transport;
        t.StatusSet(Id, 0);
        byte[] window = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(window, _window.Start);
        BinaryPrimitives.WriteUInt64LittleEndian(window.AsSpan(8), _window.Size);
        var set = t.Execute(Id, TransportCommand.DeviceClass, TransportCommand.DmaWindowSet, window, 4);
        if (!set.Ok)
            throw new FrontEndException($"managed device {Id}: DMA_WINDOW_SET failed: {set.Describe()}");
        t.StatusSet(Id, Acknowledge);
        t.StatusSet(Id, Acknowledge | Driver);
        ulong offered = (ulong)t.DevFeaturesGet(Id);
        ulong wanted = VirtioFeature.Mask(VirtioFeature.Version1) | (1UL << 5) /* MAC */ | (1UL << 16) /* STATUS */;
        Features = offered & wanted;
        t.DrvFeaturesSet(Id, Features);
        t.StatusSet(Id, Acknowledge | Driver | FeaturesOk);
        if ((t.StatusGet(Id) & FeaturesOk) == 0)
            throw new FrontEndException($"managed device {Id} refused features 0x{Features:x}");
        Rx = SetUpQueue(ReceiveQueue, vector: 0);
        Tx = SetUpQueue(TransmitQueue, vector: 1);
        t.ConfigVectorSet(Id, 2);
        t.StatusSet(Id, Acknowledge | Driver | FeaturesOk | DriverOk);
        for (int i = 0; i < receiveBuffers; i++)
            PostReceiveBuffer(_window.Allocate(BufferSize));
        t.Notify(Id, ReceiveQueue);
    }

    private DriverQueue SetUpQueue(ushort index, ushort vector)
    {
        var t = _transport;
        int size = Math.Min((int)t.VqInfo(Id, index).MaxSize, 256);
        var q = new DriverQueue(_window, index, size);
        t.MsiSet(Id, vector, _msi + 4UL * vector, 0x100u + vector, masked: false);
        t.VqSet(Id, index, (ushort)size, vector, q.DescriptorTable, q.AvailableRing, q.UsedRing);
        t.VqEnable(Id, index);
        return q;
    }

    /// <summary>The data last written by MSI vector <paramref name="vector"/> (0 while it never fired).</summary>
    public uint MsiData(int vector) => BinaryPrimitives.ReadUInt32LittleEndian(_window.Ram.Span(_msi + 4UL * (uint)vector, 4));

    private void PostReceiveBuffer(ulong address)
    {
        ushort head = Rx.AddChain([new BufferSpec(address, BufferSize, true)]);
        _rxBuffers[head] = address;
    }

    /// <summary>Sends one Ethernet frame and waits until the device has taken it.</summary>
    public void Send(ReadOnlySpan<byte> frame, int timeoutMs = 10_000)
    {
        if (frame.Length > BufferSize - HeaderSize)
            throw new ArgumentException("frame too large", nameof(frame));
        ulong buffer = _txBuffers.Count > 0 ? _txBuffers.Dequeue() : _window.Allocate(BufferSize);
        var span = _window.Ram.Span(buffer, HeaderSize + frame.Length);
        span[..HeaderSize].Clear();
        frame.CopyTo(span[HeaderSize..]);
        Tx.AddChain([new BufferSpec(buffer, (uint)(HeaderSize + frame.Length), false)]);
        _transport.Notify(Id, TransmitQueue);
        WaitUsed(Tx, timeoutMs);
        _txBuffers.Enqueue(buffer);
    }

    /// <summary>Waits for the next received frame (without its header), reposting the buffer; null on timeout.</summary>
    public byte[]? Receive(int timeoutMs)
    {
        if (TryWaitUsed(Rx, timeoutMs) is not { } used)
            return null;
        ulong address = _rxBuffers[used.Id];
        _rxBuffers.Remove(used.Id);
        var frame = used.Length > HeaderSize ? _window.Ram.Span(address + HeaderSize, (int)used.Length - HeaderSize).ToArray() : [];
        PostReceiveBuffer(address);
        _transport.Notify(Id, ReceiveQueue);
        return frame;
    }

    private static void WaitUsed(DriverQueue q, int timeoutMs)
    {
        if (TryWaitUsed(q, timeoutMs) is null)
            throw new TimeoutException($"queue {q.Index}: no used buffer within {timeoutMs} ms");
    }

    /// <summary>Polls the used ring: the interrupt is an MSI write into the owner's memory, not this queue's call descriptor.</summary>
    private static (ushort Id, uint Length)? TryWaitUsed(DriverQueue q, int timeoutMs)
    {
        long deadline = Environment.TickCount64 + timeoutMs;
        while (true)
        {
            if (q.TryGetUsed(out var id, out var length))
                return (id, length);
            if (Environment.TickCount64 > deadline)
                return null;
            Thread.Sleep(1);
        }
    }

    /// <summary>Resets the device (its rings stop); the device itself stays until DEV_DESTROY.</summary>
    public void Dispose()
    {
        try
        {
            _transport.StatusSet(Id, 0);
        }
        catch (Exception e) when (e is FrontEndException or TimeoutException or IOException or ArgumentException or ObjectDisposedException)
        {
            // The owner (and its memory) may already be gone; its reset resets the device anyway.
        }
        Rx?.Dispose();
        Tx?.Dispose();
    }
}
