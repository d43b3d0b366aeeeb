using System.Collections.Concurrent;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// A multiqueue virtio-net driver for concurrency tests: rx0 tx0 rx1 tx1 ctrl, every buffer
/// allocated up front (so threads never share the allocator), one thread per ring. Transmit threads
/// send numbered frames; receive threads repost their buffers and record every payload seen.
/// </summary>
public sealed class MultiqueuePort : IDisposable
{
    public const int Pairs = 2;
    private const int HeaderSize = NetFrontEnd.HeaderSize;
    private const int FrameSize = 96;
    private const int TxSlots = 64;

    private readonly ulong[][] _txSlots = new ulong[Pairs][];
    private readonly Dictionary<ushort, ulong>[] _rxBuffers = new Dictionary<ushort, ulong>[Pairs];

    public MultiqueuePort(string socket, int queueSize = 256)
    {
        Session = FrontEndSession.Start(socket, new FrontEndSession.Options { QueueCount = 2 * Pairs + 1, QueueSize = queueSize, RamSize = 32 << 20 });
        for (int p = 0; p < Pairs; p++)
        {
            _txSlots[p] = Enumerable.Range(0, TxSlots).Select(_ => Session.Ram.Allocate(HeaderSize + FrameSize, 64)).ToArray();
            _rxBuffers[p] = new Dictionary<ushort, ulong>();
            var rx = Rx(p);
            for (int i = 0; i < rx.Size; i++)
            {
                ulong a = Session.Ram.Allocate(2048, 64);
                _rxBuffers[p][rx.AddChain(new BufferSpec[] { new(a, 2048, true) })] = a;
            }
            rx.Notify();
        }
        Mac = Devices.Switch.Mac.Read(Session.Connection.GetConfig(0, 6)!).ToString();
    }

    public FrontEndSession Session { get; }
    public string Mac { get; }
    public DriverQueue Rx(int pair) => Session.Queues[2 * pair];
    public DriverQueue Tx(int pair) => Session.Queues[2 * pair + 1];

    /// <summary>Payloads received, per text, with how often each came (any receive ring).</summary>
    public ConcurrentDictionary<string, int> Received { get; } = new();

    public int ReceivedCount => Received.Values.Sum();

    /// <summary>Frames seen whose addresses were not (destination, source) as expected.</summary>
    public int Misaddressed;

    /// <summary>The frame a transmit thread sends: to <paramref name="dst"/> from this port, with a payload naming it.</summary>
    public static string Payload(string sender, int pair, int seq) => $"{sender}/{pair}/{seq}";

    /// <summary>
    /// Sends <paramref name="count"/> frames to <paramref name="dst"/> on transmit ring <paramref name="pair"/>
    /// in bursts, each frame taking one credit first (released when its receiver got it), so no frame
    /// meets a receive ring without buffers.
    /// </summary>
    public void SendFrames(int pair, string name, string dst, int count, SemaphoreSlim credits, CancellationToken stop)
    {
        var tx = Tx(pair);
        var slots = _txSlots[pair];
        var dstMac = Devices.Switch.Mac.Parse(dst);
        var srcMac = Devices.Switch.Mac.Parse(Mac);
        for (int sent = 0; sent < count && !stop.IsCancellationRequested;)
        {
            int burst = Math.Min(Math.Min(32, TxSlots), count - sent);
            for (int i = 0; i < burst; i++)
            {
                if (!credits.Wait(TimeSpan.FromSeconds(30), stop))
                    throw new TimeoutException($"{name} tx{pair}: the receiver took no frame for 30 s (a frame was lost)");
                var buf = Session.Ram.Span(slots[i], HeaderSize + FrameSize);
                buf.Clear();
                dstMac.Write(buf[HeaderSize..]);
                srcMac.Write(buf[(HeaderSize + 6)..]);
                buf[HeaderSize + 12] = 0x88;
                buf[HeaderSize + 13] = 0xb5;
                System.Text.Encoding.ASCII.GetBytes(Payload(name, pair, sent + i)).CopyTo(buf[(HeaderSize + 14)..]);
                tx.AddChain(new BufferSpec[] { new(slots[i], HeaderSize + FrameSize, false) });
            }
            tx.Notify();
            for (int i = 0; i < burst; i++)
                tx.WaitUsed(30_000);
            sent += burst;
        }
    }

    /// <summary>Reaps receive ring <paramref name="pair"/> until <paramref name="stop"/>, reposting each buffer and releasing a credit per frame.</summary>
    public void ReceiveFrames(int pair, string from, SemaphoreSlim credits, CancellationToken stop)
    {
        var rx = Rx(pair);
        var buffers = _rxBuffers[pair];
        var expectedDst = Devices.Switch.Mac.Parse(Mac);
        var expectedSrc = Devices.Switch.Mac.Parse(from);
        while (!stop.IsCancellationRequested)
        {
            if (!rx.TryGetUsed(out var id, out var len))
            {
                rx.Call.Wait(20);
                continue;
            }
            ulong a = buffers[id];
            var frame = Session.Ram.Span(a + HeaderSize, (int)len - HeaderSize);
            if (Devices.Switch.Mac.Read(frame) != expectedDst || Devices.Switch.Mac.Read(frame[6..]) != expectedSrc)
                Interlocked.Increment(ref Misaddressed);
            var payload = System.Text.Encoding.ASCII.GetString(frame[14..]).TrimEnd('\0');
            Received.AddOrUpdate(payload, 1, (_, n) => n + 1);
            buffers.Remove(id);
            buffers[rx.AddChain(new BufferSpec[] { new(a, 2048, true) })] = a;
            rx.Notify();
            credits.Release();
        }
    }

    /// <summary>Asks the device to use <paramref name="pairs"/> queue pairs (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET); returns the ack.</summary>
    public byte SetPairs(int pairs)
    {
        var ctrl = Session.Queues[2 * Pairs];
        ulong cmd = Session.Ram.Allocate(4, 16);
        ulong ack = Session.Ram.Allocate(1, 16);
        var c = Session.Ram.Span(cmd, 4);
        c[0] = Devices.Net.VirtioNet.CtrlMq;
        c[1] = Devices.Net.VirtioNet.CtrlMqVqPairsSet;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(c[2..], (ushort)pairs);
        ctrl.AddChain(new BufferSpec[] { new(cmd, 4, false), new(ack, 1, true) });
        ctrl.Notify();
        ctrl.WaitUsed();
        return Session.Ram.Span(ack, 1)[0];
    }

    public void Dispose() => Session.Dispose();
}
