using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.FrontEnd;

/// <summary>
/// A device brought up the way QEMU does it: features and protocol features negotiated, memory
/// table sent, every ring configured and enabled, status DRIVER_OK. Owns the connection, the guest
/// RAM and the rings.
/// </summary>
public sealed class FrontEndSession : IDisposable
{
    private readonly Options _options;

    private FrontEndSession(VhostUserFrontEnd connection, GuestRam ram, DriverQueue[] queues, ulong features, EventFd[] errs,
        Options options, InflightRegion? inflight)
    {
        _options = options;
        Inflight = inflight;
        Connection = connection;
        Ram = ram;
        Queues = queues;
        Features = features;
        ErrorFds = errs;
    }

    public VhostUserFrontEnd Connection { get; private set; }
    /// <summary>The inflight buffer the back end gave (<see cref="Options.TrackInflight"/>), kept for <see cref="Reconnect"/>; null without one.</summary>
    public InflightRegion? Inflight { get; }
    public GuestRam Ram { get; }
    public DriverQueue[] Queues { get; }
    /// <summary>Negotiated virtio features.</summary>
    public ulong Features { get; }
    /// <summary>Per-queue error descriptors given with SET_VRING_ERR: signalled when the back end marks a ring broken.</summary>
    public EventFd[] ErrorFds { get; }

    public sealed record Options
    {
        public int QueueCount { get; init; } = 2;
        public int QueueSize { get; init; } = 256;
        public ulong RamSize { get; init; } = 16 << 20;
        /// <summary>Virtio features the driver wants; the session takes the intersection with what is offered.</summary>
        public ulong WantedFeatures { get; init; } = ulong.MaxValue;
        /// <summary>Protocol features the front end supports.</summary>
        public ProtocolFeatures WantedProtocolFeatures { get; init; } = (ProtocolFeatures)ulong.MaxValue;
        public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);
        /// <summary>Send SET_VRING_ENABLE(1) for every ring (when protocol features are negotiated).</summary>
        public bool EnableRings { get; init; } = true;
        /// <summary>
        /// Drive packed rings (VIRTIO_F_RING_PACKED); the back end must offer them. Off by default, as
        /// QEMU's packed=off: the feature is then not accepted even when offered.
        /// </summary>
        public bool PackedRings { get; init; }
        /// <summary>Guest RAM to use (e.g. several regions); the session takes it over. A fresh <see cref="RamSize"/> region when null.</summary>
        public GuestRam? Ram { get; init; }
        /// <summary>
        /// Ask for an inflight buffer (GET_INFLIGHT_FD, then SET_INFLIGHT_FD, as QEMU's vhost-user-blk does)
        /// when INFLIGHT_SHMFD is negotiated, so a back end that restarts can resume every chain it held.
        /// </summary>
        public bool TrackInflight { get; init; }
    }

    /// <summary>Connects to <paramref name="socketPath"/> and brings the device up.</summary>
    public static FrontEndSession Start(string socketPath, Options? options = null)
    {
        options ??= new Options();
        return Start(VhostUserFrontEnd.Connect(socketPath, options.ConnectTimeout), options);
    }

    /// <summary>Brings the device up over an established connection (e.g. one a client-mode back end made); takes ownership of it.</summary>
    public static FrontEndSession Start(VhostUserFrontEnd fe, Options? options = null)
    {
        options ??= new Options();
        var ram = options.Ram ?? new GuestRam(options.RamSize);
        var queues = new List<DriverQueue>();
        var errs = new List<EventFd>();
        InflightRegion? inflight = null;
        try
        {
            ulong offered = fe.GetFeatures();
            // As QEMU: VHOST_F_LOG_ALL is set only while migrating (SET_FEATURES again, rings running).
            ulong features = offered & options.WantedFeatures & ~VirtioFeature.Mask(VirtioFeature.VhostLogAll);
            if (!options.PackedRings)
                features &= ~VirtioFeature.Mask(VirtioFeature.RingPacked);
            else if (!VirtioFeature.Has(features, VirtioFeature.RingPacked))
                throw new FrontEndException("back end does not offer packed rings");
            if (VirtioFeature.Has(features, VirtioFeature.VhostUserProtocolFeatures))
            {
                var proto = fe.GetProtocolFeatures() & options.WantedProtocolFeatures;
                fe.SetProtocolFeatures(proto);
            }
            if ((fe.Negotiated & ProtocolFeatures.Mq) != 0 && fe.GetQueueNum() < (ulong)options.QueueCount)
                throw new FrontEndException($"back end has fewer than {options.QueueCount} queues");
            fe.SetOwner();
            fe.SetFeatures(features);
            if ((fe.Negotiated & ProtocolFeatures.Status) != 0)
                fe.SetStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk);
            fe.SetMemTable(ram);
            if (options.TrackInflight && (fe.Negotiated & ProtocolFeatures.InflightShmfd) != 0)
            {
                inflight = fe.GetInflightRegion((ushort)options.QueueCount, (ushort)options.QueueSize);
                if (inflight != null)
                    fe.SetInflightFd(inflight);
            }
            bool eventIdx = VirtioFeature.Has(features, VirtioFeature.RingEventIdx);
            for (int i = 0; i < options.QueueCount; i++)
            {
                var q = options.PackedRings ? DriverQueue.Packed(ram, i, options.QueueSize) : new DriverQueue(ram, i, options.QueueSize);
                q.EventIdx = eventIdx;
                queues.Add(q);
                var err = new EventFd();
                errs.Add(err);
                q.Configure(fe, err);
                if (options.EnableRings && VirtioFeature.Has(features, VirtioFeature.VhostUserProtocolFeatures))
                    fe.SetVringEnable((uint)i, true);
            }
            if ((fe.Negotiated & ProtocolFeatures.Status) != 0)
                fe.SetStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk);
            return new FrontEndSession(fe, ram, queues.ToArray(), features, errs.ToArray(), options, inflight);
        }
        catch
        {
            inflight?.Dispose();
            foreach (var q in queues) q.Dispose();
            foreach (var e in errs) e.Dispose();
            ram.Dispose();
            fe.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Connects again to a back end that restarted (the old connection is dropped) and sets the device
    /// up as it was, the way QEMU reconnects (reconnect=1): the same features, memory, inflight buffer
    /// (SET_INFLIGHT_FD), rings and notification descriptors (each ring enabled before its kick, see below). Each ring's base is its used index, as
    /// QEMU's virtio_queue_restore_last_avail_idx makes it: with an inflight buffer the back end then
    /// resumes the chains it held; without one, chains taken and not completed are taken again.
    /// </summary>
    public void Reconnect(string socketPath)
    {
        Connection.Dispose();
        var fe = VhostUserFrontEnd.Connect(socketPath, _options.ConnectTimeout);
        Connection = fe;
        ulong offered = fe.GetFeatures();
        if ((Features & ~offered) != 0)
            throw new FrontEndException($"the back end no longer offers features 0x{Features & ~offered:x}");
        if (VirtioFeature.Has(Features, VirtioFeature.VhostUserProtocolFeatures))
            fe.SetProtocolFeatures(fe.GetProtocolFeatures() & _options.WantedProtocolFeatures);
        if (Inflight != null && (fe.Negotiated & ProtocolFeatures.InflightShmfd) == 0)
            throw new FrontEndException("the back end no longer offers INFLIGHT_SHMFD");
        fe.SetOwner();
        fe.SetFeatures(Features);
        if ((fe.Negotiated & ProtocolFeatures.Status) != 0)
            fe.SetStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk);
        fe.SetMemTable(Ram);
        if (Inflight != null)
            fe.SetInflightFd(Inflight);
        for (int i = 0; i < Queues.Length; i++)
        {
            var q = Queues[i];
            // Enabled before the kick starts it, unlike QEMU: a ring started while disabled must
            // discard what it transmits (vhost-user "Ring states"), and after a restart the ring
            // holds chains the driver posted long ago, resubmitted ones first.
            if (_options.EnableRings && VirtioFeature.Has(Features, VirtioFeature.VhostUserProtocolFeatures))
                fe.SetVringEnable((uint)i, true);
            q.Configure(fe, ErrorFds[i], availBase: q.IsPacked ? (ushort)0 : q.UsedIndex);
        }
        if ((fe.Negotiated & ProtocolFeatures.Status) != 0)
            fe.SetStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk);
    }

    public void Dispose()
    {
        Inflight?.Dispose();
        Connection.Dispose();
        foreach (var q in Queues) q.Dispose();
        foreach (var e in ErrorFds) e.Dispose();
        Ram.Dispose();
    }
}
