using System.Buffers.Binary;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// A virtio-net driver in miniature over the front-end library: receive buffers on queue 0, frames
/// sent on queue 1 with the 12-byte header, frames read back with their header.
/// </summary>
public sealed class NetFrontEnd : IDisposable
{
    public const int HeaderSize = 12;
    private readonly Dictionary<ushort, (ulong Address, uint Length)> _rxBuffers = new();

    public NetFrontEnd(string socket, ulong? features = null, int queueSize = 256, bool controlQueue = false, GuestRam? ram = null, bool packed = false)
    {
        Session = FrontEndSession.Start(socket, new FrontEndSession.Options
        {
            PackedRings = packed,
            Ram = ram,
            QueueCount = controlQueue ? 3 : 2,
            QueueSize = queueSize,
            WantedFeatures = features ?? ulong.MaxValue,
        });
    }

    public FrontEndSession Session { get; }
    public DriverQueue Rx => Session.Queues[0];
    public DriverQueue Tx => Session.Queues[1];
    public DriverQueue Control => Session.Queues[2];
    public bool Mergeable => VirtioFeature.Has(Session.Features, 15);

    /// <summary>The device's MAC, from its config space: the source its frames must carry unless the owner trusts it.</summary>
    public string Mac => Devices.Switch.Mac.Read(Session.Connection.GetConfig(0, 6)!).ToString();

    /// <summary>Posts one receive buffer at a chosen guest address (one descriptor); returns its head.</summary>
    public ushort PostRxAt(ulong address, uint size)
    {
        ushort head = Rx.AddChain(new BufferSpec[] { new(address, size, true) });
        _rxBuffers[head] = (address, size);
        Rx.Notify();
        return head;
    }

    /// <summary>Posts <paramref name="count"/> receive buffers of <paramref name="size"/> bytes, each a one-descriptor chain.</summary>
    public void PostRx(int count, int size = 2048)
    {
        for (int i = 0; i < count; i++)
        {
            ulong a = Session.Ram.Allocate((ulong)size, 64);
            ushort head = Rx.AddChain(new BufferSpec[] { new(a, (uint)size, true) });
            _rxBuffers[head] = (a, (uint)size);
        }
        Rx.Notify();
    }

    /// <summary>Sends a frame (header all zero unless given) and waits until the device has consumed it.</summary>
    public void Send(ReadOnlySpan<byte> frame, ReadOnlySpan<byte> header = default)
    {
        ulong a = Session.Ram.Allocate((ulong)(HeaderSize + frame.Length), 64);
        var buf = Session.Ram.Span(a, HeaderSize + frame.Length);
        buf[..HeaderSize].Clear();
        header.CopyTo(buf);
        frame.CopyTo(buf[HeaderSize..]);
        Tx.AddChain(new BufferSpec[] { new(a, (uint)(HeaderSize + frame.Length), false) });
        Tx.Notify();
        Tx.WaitUsed();
    }

    /// <summary>Sends many frames (zero headers) in batches of up to half the ring, waiting for each batch to be consumed.</summary>
    public void SendAll(IReadOnlyList<byte[]> frames)
    {
        int batch = Math.Max(1, Tx.Size / 2);
        for (int start = 0; start < frames.Count; start += batch)
        {
            int n = Math.Min(batch, frames.Count - start);
            for (int i = 0; i < n; i++)
            {
                var frame = frames[start + i];
                ulong a = Session.Ram.Allocate((ulong)(HeaderSize + frame.Length), 64);
                var buf = Session.Ram.Span(a, HeaderSize + frame.Length);
                buf[..HeaderSize].Clear();
                frame.CopyTo(buf[HeaderSize..]);
                Tx.AddChain(new BufferSpec[] { new(a, (uint)(HeaderSize + frame.Length), false) });
            }
            Tx.Notify();
            for (int i = 0; i < n; i++)
                Tx.WaitUsed();
        }
    }

    /// <summary>Waits for one received packet; returns its num_buffers and the frame (mergeable buffers joined).</summary>
    public (ushort NumBuffers, byte[] Frame) Receive(int timeoutMs = 10_000)
    {
        var (header, frame) = ReceiveWithHeader(timeoutMs);
        return (BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(10)), frame);
    }

    /// <summary>Waits for one received packet; returns its virtio-net header and the frame (mergeable buffers joined).</summary>
    public (byte[] Header, byte[] Frame) ReceiveWithHeader(int timeoutMs = 10_000)
    {
        var (id, len) = Rx.WaitUsed(timeoutMs);
        var (addr, _) = _rxBuffers[id];
        var first = Session.Ram.Span(addr, (int)len).ToArray();
        ushort numBuffers = BinaryPrimitives.ReadUInt16LittleEndian(first.AsSpan(10));
        var data = new List<byte>(first[HeaderSize..]);
        for (int i = 1; i < numBuffers; i++)
        {
            var (nid, nlen) = Rx.WaitUsed(timeoutMs);
            data.AddRange(Session.Ram.Span(_rxBuffers[nid].Address, (int)nlen).ToArray());
        }
        return (first[..HeaderSize], data.ToArray());
    }

    /// <summary>True if no packet arrives within <paramref name="ms"/> (the used index does not move).</summary>
    public bool NothingWithin(int ms)
    {
        ushort before = Rx.UsedIndex;
        Thread.Sleep(ms);
        return Rx.UsedIndex == before;
    }

    /// <summary>Sends a control command on the control queue; returns the ack byte.</summary>
    public byte ControlCommand(byte cls, byte command, ReadOnlySpan<byte> data)
    {
        ulong cmd = Session.Ram.Allocate((ulong)(2 + data.Length), 16);
        ulong ack = Session.Ram.Allocate(1, 16);
        var c = Session.Ram.Span(cmd, 2 + data.Length);
        c[0] = cls;
        c[1] = command;
        data.CopyTo(c[2..]);
        Session.Ram.Span(ack, 1)[0] = 0xff;
        Control.AddChain(new BufferSpec[] { new(cmd, (uint)(2 + data.Length), false), new(ack, 1, true) });
        Control.Notify();
        Control.WaitUsed();
        return Session.Ram.Span(ack, 1)[0];
    }

    /// <summary>An Ethernet frame: dst, src, ethertype 0x88b5 (local experimental), then payload.</summary>
    public static byte[] Frame(string dst, string src, string payload, int padTo = 60)
    {
        var body = System.Text.Encoding.ASCII.GetBytes(payload);
        var f = new byte[Math.Max(14 + body.Length, padTo)];
        Devices.Switch.Mac.Parse(dst).Write(f);
        Devices.Switch.Mac.Parse(src).Write(f.AsSpan(6));
        f[12] = 0x88;
        f[13] = 0xb5;
        body.CopyTo(f.AsSpan(14));
        return f;
    }

    public void Dispose() => Session.Dispose();
}
