using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Fuzz;

/// <summary>
/// Hostile guest frames through virtio-net's data path: VF1 of a real device group transmits, the
/// switch forwards (spoof check, learning, flooding, hairpin), and VF2's receive ring takes what
/// arrives (receive filter, mergeable buffers, offloads passed on or finished in software: checksum
/// completion and TCP segmentation). Both VFs are driven by real front ends over their sockets.
///
/// Input: a selector byte (bit 0 sender offloads, 1 sender mergeable, 2 receiver checksum and TSO,
/// 3 receiver mergeable, 4 receiver ECN, 5-6 receive buffer shape), then up to 16 frames, each a
/// shape byte (bits 0-1 descriptors minus one, 2 a trailing writable descriptor, 3 indirect,
/// 4 addresses fixed up to the sender's own source, 5 to broadcast rather than the receiver, 6 length
/// plus 65535), a u16 length of header plus frame, three u16 split points, and that many bytes.
/// </summary>
public static class NetTxTarget
{
    public const int MaxFrames = 16;
    private static readonly Lazy<NetTxRig> Shared = new(() => new NetTxRig());

    public static void Run(ReadOnlySpan<byte> data)
    {
        var input = new FuzzInput(data);
        var rig = Shared.Value;
        rig.Use(input.Byte());
        rig.Send(ref input);
        FormattingLoggerProvider.ThrowIfUnexpected();
    }

    /// <summary>Shape byte flags (also used by the seeds).</summary>
    public const byte TrailingWritable = 4, Indirect = 8, FixAddresses = 16, ToBroadcast = 32, Long = 64;
    public const byte SenderOffloads = 1, SenderMergeable = 2, ReceiverOffloads = 4, ReceiverMergeable = 8, ReceiverEcn = 16;
}

/// <summary>The group, its two VFs' front ends (made again when the selector changes), and the checks.</summary>
internal sealed class NetTxRig
{
    private const int HeaderSize = VirtioNet.HeaderSize;
    private const int QueueSize = 128, RxChains = 16, Gap = 64, Canary = 0xa5;
    private const int SlotSize = 0x20000 + 4 * Gap;
    private const ulong OffloadTx = (1UL << VirtioNet.FCsum) | (1UL << VirtioNet.FHostTso4) | (1UL << VirtioNet.FHostTso6) | (1UL << VirtioNet.FHostEcn);
    private const ulong OffloadRx = (1UL << VirtioNet.FGuestCsum) | (1UL << VirtioNet.FGuestTso4) | (1UL << VirtioNet.FGuestTso6);
    private static readonly Mac Vf1 = Mac.Parse("02:56:56:00:00:01"), Vf2 = Mac.Parse("02:56:56:00:00:02");

    private readonly string _directory = Path.Combine(Path.GetTempPath(), "vuv-fuzz-net-" + Environment.ProcessId);
    private readonly Backend.VhostUserServer _server;
    private readonly Group.DeviceGroup _group;
    private readonly NetDevice _sender, _receiver;
    private int _selector = -1;
    private FrontEndSession? _tx, _rx;
    private ulong[] _slots = [];
    private (ulong Address, uint Length)[][] _rxBuffers = [];
    private readonly Dictionary<ushort, int> _rxHeads = new();
    private readonly bool[] _rxPosted = new bool[RxChains];
    private ulong _rxArea;

    public NetTxRig()
    {
        Directory.CreateDirectory(_directory);
        var loggers = FormattingLoggerProvider.Factory;
        _server = new Backend.VhostUserServer(loggers, 1);
        _group = new Group.DeviceGroup(_server, new Group.DeviceGroupOptions { SocketDirectory = _directory, Vfs = 2 }, loggers);
        _group.Start();
        _sender = _group.NetDeviceOf(1)!;
        _receiver = _group.NetDeviceOf(2)!;
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(_directory, recursive: true); } catch (IOException) { }
        };
    }

    /// <summary>Connects both front ends with the features the selector asks for, unless they already are.</summary>
    public void Use(byte selector)
    {
        if (selector == _selector && _tx != null)
            return;
        _tx?.Dispose();
        _rx?.Dispose();
        _tx = _rx = null;
        _selector = selector;
        ulong tx = ulong.MaxValue, rx = ulong.MaxValue;
        if ((selector & NetTxTarget.SenderOffloads) == 0) tx &= ~OffloadTx;
        if ((selector & NetTxTarget.SenderMergeable) == 0) tx &= ~(1UL << VirtioNet.FMrgRxbuf);
        if ((selector & NetTxTarget.ReceiverOffloads) == 0) rx &= ~OffloadRx;
        if ((selector & NetTxTarget.ReceiverMergeable) == 0) rx &= ~(1UL << VirtioNet.FMrgRxbuf);
        if ((selector & NetTxTarget.ReceiverEcn) == 0) rx &= ~(1UL << VirtioNet.FGuestEcn);
        var options = new FrontEndSession.Options { QueueCount = 2, QueueSize = QueueSize, RamSize = 8 << 20 };
        _tx = FrontEndSession.Start(Path.Combine(_directory, "vf1.sock"), options with { WantedFeatures = tx });
        _rx = FrontEndSession.Start(Path.Combine(_directory, "vf2.sock"), options with { WantedFeatures = rx, RamSize = 8 << 20 });
        _slots = new ulong[NetTxTarget.MaxFrames];
        for (int i = 0; i < _slots.Length; i++)
            _slots[i] = _tx.Ram.Allocate(SlotSize, 64);

        // Receive chains by shape, each buffer followed by a gap of canaries nothing may write into.
        uint[][] shapes = ((selector >> 5) & 3) switch
        {
            0 => [[2048]],
            1 => [[256]],                  // small: frames need mergeable buffers or are dropped
            2 => [[11, 1525], [64, 64]],   // num_buffers split across two descriptors
            _ => [[HeaderSize + 0x10000]], // a whole GSO frame
        };
        _rxBuffers = new (ulong, uint)[RxChains][];
        ulong total = 0;
        for (int c = 0; c < RxChains; c++)
            foreach (var length in shapes[c % shapes.Length])
                total += length + Gap;
        _rxArea = _rx.Ram.Allocate(total, 64);
        _rx.Ram.Span(_rxArea, (int)total).Fill(Canary);
        ulong at = _rxArea;
        for (int c = 0; c < RxChains; c++)
        {
            var shape = shapes[c % shapes.Length];
            _rxBuffers[c] = new (ulong, uint)[shape.Length];
            for (int i = 0; i < shape.Length; i++)
            {
                _rxBuffers[c][i] = (at, shape[i]);
                at += shape[i] + Gap;
            }
        }
        _rxHeads.Clear();
        Array.Clear(_rxPosted);
    }

    public void Send(ref FuzzInput input)
    {
        var tx = _tx!.Queues[1];
        var rx = _rx!.Queues[0];
        bool mergeable = VirtioFeature.Has(_rx.Features, VirtioNet.FMrgRxbuf);
        bool takesGso = VirtioFeature.Has(_rx.Features, VirtioNet.FGuestTso4) || VirtioFeature.Has(_rx.Features, VirtioNet.FGuestTso6);
        bool takesChecksum = VirtioFeature.Has(_rx.Features, VirtioNet.FGuestCsum);
        PostReceiveBuffers(rx);
        var before = Snapshot();

        int frames = 0;
        Span<BufferSpec> specs = stackalloc BufferSpec[5];
        Span<int> cuts = stackalloc int[5];
        while (!input.IsEmpty && frames < NetTxTarget.MaxFrames)
        {
            byte shape = input.Byte();
            // Past 64 KiB too: a GSO frame's length limit is checked at its edge.
            int length = input.U16() + ((shape & NetTxTarget.Long) != 0 ? 0xffff : 0);
            int pieces = 1 + (shape & 3);
            cuts[0] = 0;
            for (int i = 1; i < 4; i++)
                cuts[i] = input.U16() % (length + 1);
            cuts[1..pieces].Sort();
            cuts[pieces] = length;
            ulong slot = _slots[frames];
            var bytes = _tx.Ram.Span(slot, SlotSize);
            bytes.Clear();
            // The frame laid out contiguously first (addresses fixed up if asked), then spread over the pieces.
            Span<byte> frame = new byte[length];
            input.Take(length).CopyTo(frame);
            if ((shape & NetTxTarget.FixAddresses) != 0 && length >= HeaderSize + 12)
            {
                ((shape & NetTxTarget.ToBroadcast) != 0 ? Mac.Broadcast : Vf2).Write(frame[HeaderSize..]);
                Vf1.Write(frame[(HeaderSize + 6)..]);
            }
            ulong address = slot;
            for (int i = 0; i < pieces; i++)
            {
                int n = cuts[i + 1] - cuts[i];
                frame[cuts[i]..cuts[i + 1]].CopyTo(_tx.Ram.Span(address, n));
                specs[i] = new BufferSpec(address, (uint)n, false);
                address += (ulong)n + Gap;
            }
            int count = pieces;
            if ((shape & NetTxTarget.TrailingWritable) != 0)
                specs[count++] = new BufferSpec(address, 64, true);
            if ((shape & NetTxTarget.Indirect) != 0)
                tx.AddIndirectChain(specs[..count]);
            else
                tx.AddChain(specs[..count]);
            frames++;
        }
        if (frames == 0)
            return;
        tx.Notify();

        // Every transmitted chain comes back, with nothing written (a transmit chain is only read).
        var deadline = Environment.TickCount64 + 3000;
        for (int done = 0; done < frames;)
        {
            if (tx.TryGetUsed(out _, out uint used))
            {
                FuzzInvariantException.Check(used == 0, $"a transmit chain came back with {used} bytes written");
                done++;
                continue;
            }
            FuzzInvariantException.Check(Environment.TickCount64 < deadline, $"{frames - done} of {frames} transmit chains not returned within 3 s");
            tx.Call.Wait(10);
        }
        // Deliveries are published after the transmit burst: wait until every worker finished its turn.
        _group.DataPath.Loop.Invoke(() => 0);
        foreach (var w in _group.PairWorkers)
            w.Loop.Invoke(() => 0);
        var after = Snapshot();

        int received = CollectReceived(rx, mergeable, takesGso, takesChecksum);
        CheckCanaries();

        // Every chain is counted once at the sender: into the switch, or dropped there with a reason.
        long sent = after.Tx - before.Tx, senderDrops = after.SenderDrops - before.SenderDrops;
        FuzzInvariantException.Check(sent + senderDrops == frames, $"{frames} chains sent, but the sender counted {sent} forwarded and {senderDrops} dropped");
        long rxPackets = after.Rx - before.Rx, segments = after.Segments - before.Segments, segmented = after.Segmented - before.Segmented;
        FuzzInvariantException.Check(received <= rxPackets + segments && received >= rxPackets + segments - segmented,
            $"{received} frames in the receive ring, but the receiver counted {rxPackets} delivered, {segmented} segmented into {segments}");
        FuzzInvariantException.Check(rxPackets + after.ReceiverDrops - before.ReceiverDrops <= sent,
            $"the receiver counted {rxPackets} delivered and {after.ReceiverDrops - before.ReceiverDrops} dropped of {sent} forwarded");
    }

    private readonly record struct Counts(long Tx, long SenderDrops, long Rx, long ReceiverDrops, long Segmented, long Segments);

    private Counts Snapshot()
    {
        var s = _sender.Counters;
        var r = _receiver.Counters;
        long senderDrops = s.Drops(DropReason.Runt) + s.Drops(DropReason.BadHeader) + s.Drops(DropReason.Oversize) +
                           s.Drops(DropReason.SpoofedSource) + s.Drops(DropReason.LinkDown);
        return new Counts(s.TxPackets, senderDrops, r.RxPackets, r.TotalDrops, r.FramesSegmented, r.SegmentsMade);
    }

    private void PostReceiveBuffers(DriverQueue rx)
    {
        Span<BufferSpec> specs = stackalloc BufferSpec[2];
        bool any = false;
        for (int c = 0; c < RxChains; c++)
        {
            if (_rxPosted[c])
                continue;
            var buffers = _rxBuffers[c];
            for (int i = 0; i < buffers.Length; i++)
                specs[i] = new BufferSpec(buffers[i].Address, buffers[i].Length, true);
            _rxHeads[rx.AddChain(specs[..buffers.Length])] = c;
            _rxPosted[c] = true;
            any = true;
        }
        if (any)
            rx.Notify();
    }

    /// <summary>Takes every used receive chain, checks it, and returns how many frames they held.</summary>
    private int CollectReceived(DriverQueue rx, bool mergeable, bool takesGso, bool takesChecksum)
    {
        int frames = 0, expectBuffers = 0, frameBytes = 0;
        bool gso = false;
        Span<byte> header = stackalloc byte[HeaderSize];
        while (rx.TryGetUsed(out ushort head, out uint length))
        {
            FuzzInvariantException.Check(_rxHeads.Remove(head, out int c), $"the receiver got back head {head}, which it did not post");
            _rxPosted[c] = false;
            var buffers = _rxBuffers[c];
            uint room = 0;
            foreach (var b in buffers)
                room += b.Length;
            FuzzInvariantException.Check(length <= room, $"a receive chain of {room} bytes came back with {length} written");
            if (expectBuffers == 0)
            {
                FuzzInvariantException.Check(length >= HeaderSize, $"a receive chain came back with {length} bytes, less than a header");
                Gather(buffers, header);
                ushort numBuffers = BinaryPrimitives.ReadUInt16LittleEndian(header[VirtioNet.HeaderNumBuffersOffset..]);
                FuzzInvariantException.Check(mergeable ? numBuffers >= 1 && numBuffers <= RxChains : numBuffers == 1, $"num_buffers {numBuffers} (mergeable {mergeable})");
                byte flags = header[VirtioNet.HeaderFlagsOffset], gsoType = header[VirtioNet.HeaderGsoTypeOffset];
                FuzzInvariantException.Check(takesChecksum || flags == 0, $"a receiver without GUEST_CSUM got flags {flags}");
                FuzzInvariantException.Check(takesGso || gsoType == 0, $"a receiver without GUEST_TSO got gso_type {gsoType}");
                gso = gsoType != 0;
                expectBuffers = numBuffers;
                frameBytes = -HeaderSize;
                frames++;
            }
            frameBytes += (int)length;
            if (--expectBuffers == 0)
                FuzzInvariantException.Check(gso ? frameBytes <= Frame.MaxLength : frameBytes <= _receiver.Mtu + VirtioNet.EthernetHeader + 4,
                    $"a frame of {frameBytes} bytes was delivered (gso {gso}, MTU {_receiver.Mtu})");
        }
        FuzzInvariantException.Check(expectBuffers == 0, $"a frame's num_buffers promised {expectBuffers} more buffers than came back");
        return frames;
    }

    private void Gather((ulong Address, uint Length)[] buffers, Span<byte> into)
    {
        int at = 0;
        foreach (var (address, length) in buffers)
        {
            int n = Math.Min((int)length, into.Length - at);
            _rx!.Ram.Span(address, n).CopyTo(into[at..]);
            at += n;
            if (at == into.Length)
                return;
        }
    }

    private void CheckCanaries()
    {
        foreach (var chain in _rxBuffers)
            foreach (var (address, length) in chain)
            {
                var gap = _rx!.Ram.Span(address + length, Gap);
                FuzzInvariantException.Check(!gap.ContainsAnyExcept((byte)Canary), $"bytes written past a receive buffer at {address:x} of {length} bytes");
            }
    }
}
