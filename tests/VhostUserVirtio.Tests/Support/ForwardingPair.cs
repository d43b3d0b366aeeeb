using System.Buffers.Binary;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// Two net front ends forwarding frames to each other through the switch, on a background thread,
/// for as long as it runs: small batches each way, unicast to the other's MAC from its own MAC,
/// every frame numbered and filled with a pattern derived from its number. Every frame that claims
/// to come from the peer is checked byte for byte and must arrive in order; anything else (floods
/// from other members) is counted and ignored. Buffers are allocated once and reused. Nothing is
/// said about speed: the owner asks only whether frames keep arriving and arrive intact.
/// </summary>
public sealed class ForwardingPair : IDisposable
{
    private const int HeaderSize = 12;
    private const int Batch = 8;
    private const int RxBuffers = 128;
    private const int BufferSize = 2048;
    private const ushort EtherType = 0x88b5;
    private const uint Magic = 0x56555646; // "VUVF"
    private const int MaxFrame = 1514;

    private readonly End _a, _b;
    private readonly Thread _thread;
    private readonly bool _strict;
    private readonly Lock _gate = new();
    private readonly List<string> _problems = new();
    private volatile bool _stop;
    private long _delivered, _foreign, _lost, _stalls;

    /// <param name="strict">
    /// Record every anomaly as a problem (the members that must stay undisturbed). Not strict: the
    /// traffic of a front end that is itself misbehaving, where only the attempt matters.
    /// </param>
    public ForwardingPair(FrontEndSession a, Mac macA, FrontEndSession b, Mac macB, bool strict = true, string name = "pair")
    {
        _strict = strict;
        _a = new End(a, macA, $"{name}:{macA}");
        _b = new End(b, macB, $"{name}:{macB}");
        _thread = new Thread(Run) { Name = name, IsBackground = true };
        _thread.Start();
    }

    /// <summary>Frames received intact from the peer, both directions together.</summary>
    public long Delivered => Interlocked.Read(ref _delivered);

    public IReadOnlyList<string> Problems
    {
        get { lock (_gate) return _problems.ToList(); }
    }

    public override string ToString() =>
        $"{Delivered} frames delivered intact, {Interlocked.Read(ref _foreign)} foreign frames ignored, " +
        $"{Interlocked.Read(ref _lost)} numbers skipped, {Interlocked.Read(ref _stalls)} waits over 5 s";

    /// <summary>Waits until more than <paramref name="than"/> frames were delivered; false on timeout or once a problem was seen.</summary>
    public bool WaitForMoreThan(long than, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (Delivered <= than)
        {
            if (DateTime.UtcNow > deadline || (_strict && Problems.Count > 0) || !_thread.IsAlive)
                return false;
            Thread.Sleep(10);
        }
        return true;
    }

    private void Problem(string what)
    {
        lock (_gate)
            if (_problems.Count < 20)
                _problems.Add($"{DateTime.UtcNow:HH:mm:ss.fff} {what}");
    }

    private void Run()
    {
        try
        {
            while (!_stop)
            {
                Forward(_a, _b);
                Forward(_b, _a);
                Thread.Sleep(1); // leave the 2-core machine some room; the rate is not the point
            }
        }
        catch (Exception e) when (e is FrontEndException or InvalidOperationException or ArgumentException or ObjectDisposedException)
        {
            if (!_stop)
                Problem($"forwarding thread ended: {e.GetType().Name}: {e.Message}");
        }
    }

    private void Forward(End from, End to)
    {
        var tx = from.Session.Queues[1];
        int sent = 0;
        for (int i = 0; i < Batch && tx.FreeDescriptors > 0 && from.FreeTx.Count > 0; i++)
        {
            int buffer = from.FreeTx.Pop();
            ulong seq = ++from.NextSeq;
            int length = FrameLength(seq);
            var span = from.Session.Ram.Span(from.TxAddress[buffer], HeaderSize + length);
            span[..HeaderSize].Clear();
            WriteFrame(span[HeaderSize..], to.Mac, from.Mac, seq);
            from.TxHeadToBuffer[tx.AddChain([new BufferSpec(from.TxAddress[buffer], (uint)(HeaderSize + length), false)])] = buffer;
            sent++;
        }
        if (sent > 0)
            tx.Notify();

        // The device returns transmitted buffers whether or not the frame was delivered.
        var deadline = Environment.TickCount64 + (_strict ? 5_000 : 500);
        while (from.FreeTx.Count < from.TxAddress.Length && !_stop)
        {
            if (tx.TryGetUsed(out ushort head, out _))
            {
                from.FreeTx.Push(from.TxHeadToBuffer[head]);
                continue;
            }
            if (Environment.TickCount64 > deadline)
            {
                Interlocked.Increment(ref _stalls);
                if (_strict)
                    Problem($"{from.Name}: transmitted frames not returned within 5 s");
                break;
            }
            tx.Call.Wait(20);
        }

        // Collect what arrived at the peer: up to the frames just sent, without waiting long for losses.
        deadline = Environment.TickCount64 + (_strict ? 2_000 : 200);
        var rx = to.Session.Queues[0];
        bool reposted = false;
        while (to.LastSeqFrom < from.NextSeq && !_stop)
        {
            if (rx.TryGetUsed(out ushort head, out uint length))
            {
                Check(to, from, head, length);
                int buffer = to.RxHeadToBuffer[head];
                to.RxHeadToBuffer[rx.AddChain([new BufferSpec(to.RxAddress[buffer], BufferSize, true)])] = buffer;
                reposted = true;
                continue;
            }
            if (Environment.TickCount64 > deadline)
                break;
            rx.Call.Wait(20);
        }
        if (reposted)
            rx.Notify();
    }

    private void Check(End to, End from, ushort head, uint length)
    {
        var buffer = to.Session.Ram.Span(to.RxAddress[to.RxHeadToBuffer[head]], BufferSize);
        if (length < HeaderSize + 14 || length > BufferSize)
        {
            Interlocked.Increment(ref _foreign);
            return;
        }
        var frame = buffer[HeaderSize..(int)length];
        if (Mac.Read(frame[6..]).Value != from.Mac.Value || BinaryPrimitives.ReadUInt16BigEndian(frame[12..]) != EtherType)
        {
            Interlocked.Increment(ref _foreign);
            return;
        }
        ulong seq = frame.Length >= 26 ? BinaryPrimitives.ReadUInt64LittleEndian(frame[18..]) : 0;
        var expected = new byte[FrameLength(seq)];
        if (seq == 0 || seq > from.NextSeq || frame.Length != expected.Length)
        {
            Problem($"{to.Name}: corrupt frame from {from.Mac}: length {frame.Length}, number {seq} (last sent {from.NextSeq})");
            return;
        }
        WriteFrame(expected, to.Mac, from.Mac, seq);
        if (!frame.SequenceEqual(expected))
        {
            int at = 0;
            while (frame[at] == expected[at]) at++;
            Problem($"{to.Name}: frame {seq} from {from.Mac} differs at byte {at} of {frame.Length}");
            return;
        }
        ushort numBuffers = BinaryPrimitives.ReadUInt16LittleEndian(buffer[10..]);
        if (to.Mergeable && numBuffers != 1)
            Problem($"{to.Name}: frame {seq} fits one buffer but num_buffers is {numBuffers}");
        if (seq <= to.LastSeqFrom)
            Problem($"{to.Name}: frame {seq} from {from.Mac} arrived after frame {to.LastSeqFrom}");
        else
        {
            // Frames are lost only if the receiver had no buffers (it keeps 128 posted for batches of
            // 8) or the switch sent them elsewhere: a member that claimed this receiver's MAC.
            if (seq != to.LastSeqFrom + 1)
                Problem($"{to.Name}: frames {to.LastSeqFrom + 1}..{seq - 1} from {from.Mac} never arrived (dropped or switched to another port)");
            Interlocked.Add(ref _lost, (long)(seq - to.LastSeqFrom - 1));
            to.LastSeqFrom = seq;
            Interlocked.Increment(ref _delivered);
        }
    }

    private static int FrameLength(ulong seq) => 60 + (int)(seq * 37 % (MaxFrame - 60));

    private static void WriteFrame(Span<byte> frame, Mac dst, Mac src, ulong seq)
    {
        dst.Write(frame);
        src.Write(frame[6..]);
        BinaryPrimitives.WriteUInt16BigEndian(frame[12..], EtherType);
        BinaryPrimitives.WriteUInt32LittleEndian(frame[14..], Magic);
        BinaryPrimitives.WriteUInt64LittleEndian(frame[18..], seq);
        for (int i = 26; i < frame.Length; i++)
            frame[i] = (byte)(seq * 131 + (ulong)i * 7);
    }

    public void Dispose()
    {
        _stop = true;
        _thread.Join(TimeSpan.FromSeconds(15));
    }

    private sealed class End
    {
        public End(FrontEndSession session, Mac mac, string name)
        {
            Session = session;
            Mac = mac;
            Name = name;
            Mergeable = VirtioFeature.Has(session.Features, Devices.Net.VirtioNet.FMrgRxbuf);
            TxAddress = Enumerable.Range(0, 2 * Batch).Select(_ => session.Ram.Allocate(HeaderSize + MaxFrame, 64)).ToArray();
            for (int i = TxAddress.Length - 1; i >= 0; i--)
                FreeTx.Push(i);
            RxAddress = Enumerable.Range(0, RxBuffers).Select(_ => session.Ram.Allocate(BufferSize, 64)).ToArray();
            var rx = session.Queues[0];
            for (int i = 0; i < RxBuffers; i++)
                RxHeadToBuffer[rx.AddChain([new BufferSpec(RxAddress[i], BufferSize, true)])] = i;
            rx.Notify();
        }

        public FrontEndSession Session { get; }
        public Mac Mac { get; }
        public string Name { get; }
        public bool Mergeable { get; }
        public ulong[] TxAddress { get; }
        public ulong[] RxAddress { get; }
        public Stack<int> FreeTx { get; } = new();
        public Dictionary<ushort, int> TxHeadToBuffer { get; } = new();
        public Dictionary<ushort, int> RxHeadToBuffer { get; } = new();
        /// <summary>Number of the last frame sent from here.</summary>
        public ulong NextSeq;
        /// <summary>Number of the last intact frame received from the peer.</summary>
        public ulong LastSeqFrom;
    }
}
