using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Devices.Net;

/// <summary>Static shape of a virtio-net device.</summary>
public sealed record NetDeviceOptions
{
    /// <summary>MAC reported in config space (VIRTIO_NET_F_MAC). Null: none offered.</summary>
    public Mac? Mac { get; init; }
    public int QueuePairs { get; init; } = 1;
    public bool ControlQueue { get; init; } = true;
    public int Mtu { get; init; } = 1500;
    public int MaxQueueSize { get; init; } = 1024;
    /// <summary>
    /// The owner's trust at start (NET_MEMBER_CTRL class 0x80 changes it). Untrusted, the device may
    /// send only from its own MAC (spoof check) and its own control queue may not change its MAC or
    /// receive modes, as an SR-IOV VF starts out.
    /// </summary>
    public bool Trusted { get; init; }
    /// <summary>Offer checksum and TCP segmentation offloads (<see cref="NetDevice.OffloadFeatures"/>).</summary>
    public bool Offloads { get; init; } = true;
}

/// <summary>
/// A virtio-net device (VIRTIO 5.1) plugged into an <see cref="L2Switch"/>. Transmit queues feed
/// frames to the switch straight out of the guest's buffers; frames for this port are copied straight
/// into the guest's receive buffers (mergeable or not). The control queue, when the front end leaves
/// it to us, sets receive filters, MAC, announce and queue pairs.
///
/// Checksum and TCP segmentation offloads are in NetDevice.Offload.cs. Each ring runs on one of the
/// group's workers; receive rings also take frames from the other workers' transmit rings (see
/// <see cref="DeliveryGate"/>).
/// </summary>
public sealed partial class NetDevice : IVirtioDevice, INetDeviceControl, ISwitchPort
{
    private readonly L2Switch _switch;
    private readonly ILogger _logger;
    private readonly Action<Action> _onDataPath;
    private readonly DeviceQueue?[] _queues;
    // Per worker lane: the receive rings that worker wrote into during its burst (it notifies them).
    private readonly bool[]?[] _notifyPending = new bool[]?[Worker.MaxLanes];
    // The chains of the frame being received, per worker lane; allocated once, not per packet.
    private readonly (ushort Head, uint Length)[]?[] _rxUsed = new (ushort, uint)[]?[Worker.MaxLanes];
    private byte[] _controlBuffer = [];
    private ulong _driverFeatures;
    private int _headerSize = VirtioNet.HeaderSize;
    private bool _mergeable;
    private int _activePairs;
    private ushort _status = VirtioNet.StatusLinkUp;
    private Mac? _mac;
    private readonly LogRateLimit _spoofLog = new(burst: 5, window: TimeSpan.FromSeconds(10));
    // Announcements and MTU changes come from the front end, which may repeat them at will.
    private readonly LogRateLimit _frontEndRequestLog = new(burst: 10, window: TimeSpan.FromSeconds(10));

    /// <param name="onDataPath">Runs an action on the switch's data-path thread (for RARP injection).</param>
    public NetDevice(string name, NetDeviceOptions options, L2Switch @switch, Action<Action> onDataPath, ILogger logger)
    {
        if (options.QueuePairs < 1 || options.QueuePairs > 0x8000)
            throw new ArgumentOutOfRangeException(nameof(options), "queue pairs must be 1..32768");
        Name = name;
        Options = options;
        _switch = @switch;
        _onDataPath = onDataPath;
        _logger = logger;
        _mac = options.Mac;
        Trusted = options.Trusted;
        Mtu = options.Mtu;
        _activePairs = options.QueuePairs;
        QueueCount = 2 * options.QueuePairs + (options.ControlQueue ? 1 : 0);
        _queues = new DeviceQueue?[QueueCount];
        Filter.Address = _mac;
    }

    public string Name { get; }
    public NetDeviceOptions Options { get; }
    public PortCounters Counters { get; } = new();
    public NetReceiveFilter Filter { get; } = new();
    public int QueueCount { get; }
    public int MaxQueueSize => Options.MaxQueueSize;
    public int ConfigSize => VirtioNet.ConfigSize;
    public int Mtu { get; private set; }
    public Mac? Mac => _mac;
    public bool LinkUp => (_status & VirtioNet.StatusLinkUp) != 0;
    /// <summary>The features the driver accepted (from its front end or the owner's transport).</summary>
    public ulong DriverFeatures => _driverFeatures;
    /// <summary>Queue pairs in use (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET), at most <see cref="NetDeviceOptions.QueuePairs"/>.</summary>
    public int ActivePairs => _activePairs;
    private int ControlQueueIndex => Options.ControlQueue ? 2 * Options.QueuePairs : -1;

    public ulong Features
    {
        get
        {
            ulong f = VirtioFeature.Mask(VirtioFeature.Version1) | VirtioFeature.Mask(VirtioFeature.RingEventIdx) |
                      VirtioFeature.Mask(VirtioFeature.RingIndirectDesc) | VirtioFeature.Mask(VirtioFeature.RingPacked) |
                      VirtioFeature.Mask(VirtioNet.FMrgRxbuf) | VirtioFeature.Mask(VirtioNet.FStatus) |
                      VirtioFeature.Mask(VirtioNet.FMtu);
            if (_mac != null)
                f |= VirtioFeature.Mask(VirtioNet.FMac);
            if (Options.ControlQueue)
                f |= VirtioFeature.Mask(VirtioNet.FCtrlVq) | VirtioFeature.Mask(VirtioNet.FCtrlRx) | VirtioFeature.Mask(VirtioNet.FCtrlMacAddr);
            if (Options.QueuePairs > 1)
                f |= VirtioFeature.Mask(VirtioNet.FMq);
            if (Options.Offloads)
                f |= OffloadFeatures;
            return f;
        }
    }

    public ProtocolFeatures ExtraProtocolFeatures => ProtocolFeatures.Rarp | ProtocolFeatures.NetMtu;

    public void ReadConfig(int offset, Span<byte> data)
    {
        Span<byte> config = stackalloc byte[VirtioNet.ConfigSize];
        config.Clear();
        _mac?.Write(config);
        BinaryPrimitives.WriteUInt16LittleEndian(config[VirtioNet.ConfigStatus..], _status);
        BinaryPrimitives.WriteUInt16LittleEndian(config[VirtioNet.ConfigMaxPairs..], (ushort)Options.QueuePairs);
        BinaryPrimitives.WriteUInt16LittleEndian(config[VirtioNet.ConfigMtu..], (ushort)Mtu);
        config.Slice(offset, data.Length).CopyTo(data);
    }

    /// <summary>Modern virtio-net config space is read-only to the driver.</summary>
    public bool WriteConfig(int offset, ReadOnlySpan<byte> data) => false;

    public void SetDriverFeatures(ulong features)
    {
        _driverFeatures = features;
        _mergeable = VirtioFeature.Has(features, VirtioNet.FMrgRxbuf);
        _headerSize = _mergeable || VirtioFeature.Has(features, VirtioFeature.Version1) ? VirtioNet.HeaderSize : VirtioNet.LegacyHeaderSize;
        SetReceiveOffloads(features);
    }

    public void QueueStarted(DeviceQueue queue)
    {
        if (_controlBuffer.Length == 0)
            _controlBuffer = new byte[4096];
        _queues[queue.Index] = queue;
    }

    public void QueueStopped(DeviceQueue queue) => _queues[queue.Index] = null;

    public void ProcessQueue(DeviceQueue queue)
    {
        if (queue.Index == ControlQueueIndex)
        {
            var control = new ControlHandler(this);
            queue.Drain(ref control);
        }
        else if ((queue.Index & 1) == 1)
        {
            // A disabled transmit ring is still drained, its frames discarded (vhost-user "Ring states").
            var tx = new TransmitHandler(this, queue.Enabled && LinkUp);
            queue.Drain(ref tx);
            _switch.FlushNotifications();
        }
        // Receive kicks only say buffers were added; frames are copied in as they arrive.
    }

    /// <summary>Receive kicks only announce new buffers, which are taken when frames arrive: no work, no kicks.</summary>
    public bool WantsKicks(int queueIndex) => queueIndex == ControlQueueIndex || (queueIndex & 1) == 1;

    public void Reset()
    {
        _driverFeatures = 0;
        _mergeable = false;
        _headerSize = VirtioNet.HeaderSize;
        SetReceiveOffloads(0);
        _activePairs = Options.QueuePairs;
        _status = (ushort)(_status & VirtioNet.StatusLinkUp);
        Filter.Reset();
    }

    // ---- INetDeviceControl ----

    public void AnnounceMac(ReadOnlySpan<byte> mac)
    {
        var address = Switch.Mac.Read(mac);
        _logger.LogLimited(_frontEndRequestLog, LogLevel.Information, "{Device}: announcing {Mac} (RARP broadcast)", Name, address);
        _onDataPath(() =>
        {
            Span<byte> rarp = stackalloc byte[60];
            Rarp.Build(address, rarp);
            ForwardOwn(new Frame(rarp));
            _switch.FlushNotifications();
        });
    }

    public bool SetMtu(uint mtu)
    {
        if (mtu < VirtioNet.MinMtu || mtu > VirtioNet.MaxMtu)
            return false;
        Mtu = (int)mtu;
        _logger.LogLimited(_frontEndRequestLog, LogLevel.Information, "{Device}: MTU {Mtu}", Name, mtu);
        return true;
    }

    // ---- state changed by control commands (the device's control queue and the owner's NET_MEMBER_CTRL) ----

    internal void SetMac(Mac mac)
    {
        _mac = mac;
        Filter.Address = mac;
    }

    /// <summary>
    /// The owner's trust setting (after the virtio-net admin control virtqueue proposal), as SR-IOV's VF trust with spoof checking. Untrusted, the
    /// driver's own control queue may not change the MAC or receive modes (the owner still can), and
    /// every frame it sends (RARP announcements too) must carry its own MAC as source.
    /// </summary>
    public bool Trusted { get; internal set; }

    /// <summary>
    /// Sends a frame of this device's into the switch, unless the spoof check refuses it: then it is
    /// dropped before the switch sees it, so it neither learns nor moves an entry.
    /// </summary>
    private void ForwardOwn(in Frame frame)
    {
        if (!Trusted && (_mac is not { } own || own != frame.Source))
        {
            Counters.Drop(DropReason.SpoofedSource);
            _logger.LogLimited(_spoofLog, LogLevel.Warning, "{Device}: dropped a frame from source {Mac}, which is not its own MAC {Own} (spoof check; the owner can trust the device)",
                Name, frame.Source, _mac);
            return;
        }
        _switch.Forward(this, frame);
    }

    /// <summary>Sets the link state reported in config status; while down, nothing is sent or received.</summary>
    internal void SetLink(bool up) =>
        _status = (ushort)(up ? _status | VirtioNet.StatusLinkUp : _status & ~VirtioNet.StatusLinkUp);

    internal void AcknowledgeAnnounce() => _status = (ushort)(_status & ~VirtioNet.StatusAnnounce);

    internal bool SetActivePairs(int pairs)
    {
        if (pairs < 1 || pairs > Options.QueuePairs)
            return false;
        _activePairs = pairs;
        return true;
    }

    // ---- receive: ISwitchPort ----

    /// <summary>Whether the owner has stopped this device (read on the data path); unset, it never is.</summary>
    public Func<bool>? StoppedBy { get; set; }

    public bool Stopped => StoppedBy?.Invoke() ?? false;

    public bool Deliver(in Frame frame, Mac destination, out DropReason reason)
    {
        if (!LinkUp)
        {
            reason = DropReason.LinkDown;
            return false;
        }
        if (!Filter.Accepts(destination))
        {
            reason = DropReason.Filtered;
            return false;
        }
        var current = Worker.Current; // one thread-local read per frame
        var queue = PickReceiveQueue(destination, current);
        if (queue == null)
        {
            reason = DropReason.NoRxQueue;
            return false;
        }
        // Unlocked when the calling worker runs the ring and no other worker has written into it.
        bool locked = queue.Gate.Enter(queue.IsRunBy(current));
        try
        {
            // Under the lock the ring's owner cannot be stopping or moving it: look again.
            if (locked && !ReadyToReceive(queue))
            {
                reason = DropReason.NoRxQueue;
                return false;
            }
            int lane = current?.Lane ?? 0;
            if (!frame.Offload.IsNone && !TakesWhole(frame.Offload))
                return ReceiveResolved(queue, frame, lane, out reason);
            return Receive(queue, frame, lane, out reason);
        }
        finally
        {
            queue.Gate.Exit(locked);
        }
    }

    private static bool ReadyToReceive(DeviceQueue? q) => q is { Started: true, Enabled: true, Paused: false } && q.Ring.IsReady;

    /// <summary>
    /// A ready receive ring, preferably one the calling worker runs (each worker delivers into the
    /// queue pair it serves, without a lock); otherwise one chosen by the destination's hash.
    /// </summary>
    private DeviceQueue? PickReceiveQueue(Mac destination, Worker? current)
    {
        int pairs = _activePairs;
        if (pairs == 1)
        {
            var only = _queues[VirtioNet.ReceiveQueue(0)];
            return ReadyToReceive(only) ? only : null;
        }
        int start = (int)((destination.Value ^ (destination.Value >> 24)) % (ulong)pairs);
        DeviceQueue? other = null;
        for (int i = 0; i < pairs; i++)
        {
            var q = _queues[VirtioNet.ReceiveQueue((start + i) % pairs)];
            if (!ReadyToReceive(q))
                continue;
            if (q!.IsRunBy(current))
                return q;
            other ??= q;
        }
        return other;
    }

    /// <summary>
    /// Copies a frame into one receive chain, or several with mergeable buffers (num_buffers patched
    /// into the first header afterwards). If the driver has not posted enough, nothing is consumed.
    /// The frame's offload request, if any, is one this driver takes: it goes into the header.
    /// </summary>
    private bool Receive(DeviceQueue queue, in Frame frame, int lane, out DropReason reason)
    {
        var ring = queue.Ring;
        var used = _rxUsed[lane] ??= new (ushort, uint)[Options.MaxQueueSize];
        FrameReader reader = default;   // opened only when the one-step copy does not apply
        int remaining = frame.Length;
        int popped = 0;
        ulong numBuffersAt0 = 0, numBuffersAt1 = 0;
        Span<byte> header = stackalloc byte[VirtioNet.HeaderSize];
        header.Clear();
        if (!frame.Offload.IsNone)
            frame.Offload.Write(header);
        header[VirtioNet.HeaderNumBuffersOffset] = 1;

        while (true)
        {
            var chain = ring.Pop();
            if (chain == null)
            {
                ring.Rewind(popped);
                reason = DropReason.NoRxBuffer;
                if (ring.Fault != null)
                    queue.ReportFault();
                return false;
            }
            if (popped == 0)
            {
                if (chain.WritableLength < _headerSize)
                {
                    ring.Rewind(1);
                    reason = DropReason.RxBufferTooSmall;
                    return false;
                }
                if (TryCopyWhole(chain, frame, header[.._headerSize]))
                {
                    used[popped++] = (chain.Head, (uint)(_headerSize + frame.Length));
                    break;
                }
            }
            var writer = chain.Writer();
            if (popped == 0)
            {
                writer.Write(header[.._headerSize]);
                reader = frame.OpenReader();
            }
            remaining -= reader.CopyTo(ref writer);
            used[popped++] = (chain.Head, writer.Written);
            if (remaining == 0)
                break;
            if (!_mergeable || popped == Options.MaxQueueSize)
            {
                ring.Rewind(popped);
                reason = DropReason.RxBufferTooSmall;
                return false;
            }
            // A second buffer is needed: find num_buffers in the first before the next pop reuses the chain.
            if (popped == 1)
                LocateNumBuffers(chain, out numBuffersAt0, out numBuffersAt1);
        }

        if (popped > 1)
            PatchNumBuffers(queue, numBuffersAt0, numBuffersAt1, (ushort)popped);
        // Published with the burst's notification decision (FlushNotifications → NotifyIfNeeded).
        for (int i = 0; i < popped; i++)
            ring.PushUsed(used[i].Head, used[i].Length, publish: false);
        (_notifyPending[lane] ?? CreatePending(lane))[queue.Index] = true;
        if (!frame.Offload.IsNone)
            Counters.LaneAt(lane).OffloadsPassedThrough++;
        reason = default;
        return true;
    }

    /// <summary>
    /// The common case in one step: the frame's bytes lie in one place and the chain's first buffer,
    /// translated when it was validated, holds the header and the whole frame. Three plain copies,
    /// no cursors. Not while dirty logging is on (the cursors mark the pages written).
    /// </summary>
    private static bool TryCopyWhole(DescriptorChain chain, in Frame frame, ReadOnlySpan<byte> header)
    {
        if (chain.Log != null || !chain.TryGetFirstWritable(header.Length + frame.Length, out var destination) || !frame.TryGetRest(out var rest))
            return false;
        header.CopyTo(destination);
        frame.WriteAddresses(destination.Slice(header.Length, Frame.AddressesLength));
        rest.CopyTo(destination[(header.Length + Frame.AddressesLength)..]);
        return true;
    }

    /// <summary>Guest addresses of the two num_buffers bytes of the first chain's header (they may sit in different segments).</summary>
    private static void LocateNumBuffers(DescriptorChain chain, out ulong low, out ulong high)
    {
        low = high = 0;
        uint offset = VirtioNet.HeaderNumBuffersOffset;
        foreach (var seg in chain.Writable)
        {
            if (offset < seg.Length)
            {
                if (low == 0) low = seg.Address + offset; else { high = seg.Address + offset; return; }
                offset++;
                if (offset < seg.Length) { high = seg.Address + offset; return; }
            }
            offset -= seg.Length;
        }
    }

    private static void PatchNumBuffers(DeviceQueue queue, ulong low, ulong high, ushort count)
    {
        // Through the ring, so the bytes are marked in the dirty log while logging is on.
        var ring = queue.Ring;
        Span<byte> b = stackalloc byte[1];
        b[0] = (byte)count;
        ring.WriteGuest(low, b);
        b[0] = (byte)(count >> 8);
        ring.WriteGuest(high, b);
    }

    private bool[] CreatePending(int lane)
    {
        var pending = new bool[QueueCount];
        return Interlocked.CompareExchange(ref _notifyPending[lane], pending, null) ?? pending;
    }

    /// <summary>Publishes and notifies the receive rings the calling worker wrote into since its last flush.</summary>
    public void FlushNotifications()
    {
        if (_notifyPending[Worker.CurrentLane] is not { } pending)
            return;
        for (int i = 0; i < pending.Length; i++)
        {
            if (!pending[i])
                continue;
            pending[i] = false;
            if (_queues[i] is not { } q)
                continue;
            bool locked = q.Gate.Enter(q.OnOwner);
            try
            {
                if (q.Started)
                    q.NotifyIfNeeded();
            }
            finally
            {
                q.Gate.Exit(locked);
            }
        }
    }

    // ---- transmit and control handlers ----

    private readonly struct TransmitHandler(NetDevice device, bool forward) : IChainHandler
    {
        public uint Handle(DescriptorChain chain)
        {
            var counters = device.Counters;
            int hdr = device._headerSize;
            uint readable = chain.ReadableLength; // up to 4 GiB: kept unsigned, never narrowed to int
            if (readable < (uint)(hdr + VirtioNet.EthernetHeader))
            {
                counters.Drop(DropReason.Runt);
                return 0;
            }
            // One read for the virtio-net header and the Ethernet addresses behind it.
            Span<byte> header = stackalloc byte[VirtioNet.HeaderSize + 12];
            var reader = chain.Reader();
            reader.Read(header[..(hdr + 12)]);
            // An offload request (flags, gso_type) is checked once, here, and travels with the frame.
            NetHeader offload = default;
            if ((header[VirtioNet.HeaderFlagsOffset] | header[VirtioNet.HeaderGsoTypeOffset]) != 0 &&
                !device.AcceptOffload(chain, header[..NetHeader.Length], hdr, readable - (uint)hdr, out offload))
                return 0;
            if (!forward)
            {
                counters.Drop(DropReason.LinkDown);
                return 0;
            }
            // Checked before any Frame exists. A chain may repeat one buffer up to 4 GiB; taken as an
            // int its length would turn negative and pass a signed check. Only a GSO frame may be
            // longer than the MTU (up to the largest frame, checked with its header).
            if (!offload.IsGso && readable - (uint)hdr > (uint)(device.Mtu + VirtioNet.EthernetHeader + 4))
            {
                counters.Drop(DropReason.Oversize);
                return 0;
            }
            // The addresses just read are the frame's copy: every decision and every receiver uses them.
            device.ForwardOwn(new Frame(chain, (uint)hdr, header.Slice(hdr, Frame.AddressesLength)) { Offload = offload });
            return 0;
        }
    }

    private readonly struct ControlHandler(NetDevice device) : IChainHandler
    {
        public uint Handle(DescriptorChain chain)
        {
            // {u8 class; u8 command; data[]} readable, then one writable ack byte.
            var buffer = device._controlBuffer;
            if (chain.ReadableLength < 2 || chain.ReadableLength > buffer.Length || chain.WritableLength < 1)
                return Ack(chain, VirtioNet.Err);
            var reader = chain.Reader();
            int n = reader.Read(buffer);
            byte cls = buffer[0];
            if (!device.Negotiated(cls) || (!device.Trusted && cls is VirtioNet.CtrlRx or VirtioNet.CtrlMac))
                return Ack(chain, VirtioNet.Err);
            byte result = NetControl.Apply(device, cls, buffer[1], buffer.AsSpan(2, n - 2));
            if (result != VirtioNet.Ok)
                device._logger.LogDebug("{Device}: control command {Class}.{Command} refused", device.Name, cls, buffer[1]);
            return Ack(chain, result);
        }

        private static uint Ack(DescriptorChain chain, byte ack)
        {
            Span<byte> b = stackalloc byte[1];
            b[0] = ack;
            return chain.WriteAt(0, b) ? 1u : 0u;
        }
    }

    /// <summary>Whether the feature that a control class needs was negotiated by this device's driver.</summary>
    private bool Negotiated(byte cls) => cls switch
    {
        VirtioNet.CtrlRx => VirtioFeature.Has(_driverFeatures, VirtioNet.FCtrlRx),
        VirtioNet.CtrlMac => VirtioFeature.Has(_driverFeatures, VirtioNet.FCtrlRx) || VirtioFeature.Has(_driverFeatures, VirtioNet.FCtrlMacAddr),
        VirtioNet.CtrlAnnounce => VirtioFeature.Has(_driverFeatures, VirtioNet.FGuestAnnounce),
        VirtioNet.CtrlMq => VirtioFeature.Has(_driverFeatures, VirtioNet.FMq),
        _ => false,
    };

    public override string ToString() => Name;
}
