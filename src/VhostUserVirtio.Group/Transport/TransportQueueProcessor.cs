using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;
using static VhostUserVirtio.Protocol.TransportCommand;

namespace VhostUserVirtio.Group.Transport;

/// <summary>
/// The owner's transport virtqueue (docs/owner-binding.md "Transport virtqueue"): commands in seed
/// 004's virtio_transportq_ctrl framing, processed strictly in queue order on the group's worker, and
/// the managed devices they create. Device ids are positive, allocated here and never reused while
/// the process runs; at most <see cref="MaxDevices"/> exist at once. A refused command changes
/// nothing; a managed device is one more tenant, and nothing one does reaches another.
/// </summary>
public sealed class TransportQueueProcessor : IManagedDeviceHost
{
    /// <summary>Managed devices take their MACs from the group's base plus this and their id: a block clear of the VFs'.</summary>
    private const ulong MacOffset = 0x1_0000;

    private readonly DeviceGroup _group;
    private readonly ILogger _logger;
    private readonly ILogger _deviceLogger;
    private readonly byte[] _request = new byte[HeaderSize + MaxData];
    private readonly byte[] _response = new byte[AckSize + 4 + MaxResult];
    private readonly Dictionary<ulong, ManagedDevice> _devices = new();
    private readonly LogRateLimit _refusedLog = new();
    private volatile ManagedDevice[] _snapshot = [];
    private ulong _lastId;

    internal TransportQueueProcessor(DeviceGroup group, int queueIndex, ILogger logger)
    {
        _group = group;
        _logger = logger;
        // One logger for every managed device: the factory keeps each category forever, and devices come and go by the thousand.
        _deviceLogger = group.Loggers.CreateLogger("VhostUserVirtio.ManagedDevice");
        QueueIndex = queueIndex;
        MaxDevices = group.Options.MaxManagedDevices;
    }

    /// <summary>The transport queue's index among the owner's queues.</summary>
    public int QueueIndex { get; }

    /// <summary>Managed devices that may exist at once (max_vdevs of the owner information block).</summary>
    public int MaxDevices { get; }

    /// <summary>The owner's back end (set once it is served): its memory holds the transport rings and MSI targets.</summary>
    internal VhostUserBackend? OwnerBackend { get; set; }

    /// <summary>The managed devices now (any thread; a snapshot).</summary>
    public IReadOnlyList<ManagedDevice> Devices => _snapshot;

    /// <summary>Commands processed, and how many failed.</summary>
    public long Commands { get; private set; }
    public long Failures { get; private set; }

    /// <summary>Handles one command chain (group worker); returns the used length.</summary>
    public uint Handle(DescriptorChain chain)
    {
        var request = _request.AsSpan();
        int read = chain.Reader().Read(request);
        var response = _response.AsSpan();
        int room = (int)Math.Min(Math.Max(chain.WritableLength, AckSize) - AckSize, MaxResult + 4);
        AdminOutcome outcome;
        ulong id = 0;
        ushort cls = 0, command = 0;
        if (chain.WritableLength < AckSize)
        {
            _logger.LogLimited(_refusedLog, LogLevel.Warning, "transport queue: a command with {Bytes} writable bytes has no room for its ack; dropped", chain.WritableLength);
            return 0;
        }
        if (read < HeaderSize)
        {
            outcome = AdminOutcome.Invalid(AdminQualifier.InvalidField);
        }
        else
        {
            id = BinaryPrimitives.ReadUInt64LittleEndian(request);
            cls = BinaryPrimitives.ReadUInt16LittleEndian(request[8..]);
            command = BinaryPrimitives.ReadUInt16LittleEndian(request[10..]);
            // Data beyond what is read is ignored; data shorter than the command's layout is refused.
            var data = request[HeaderSize..Math.Min(read, request.Length)];
            outcome = Execute(id, cls, command, data, response[AckSize..], Math.Min(room, MaxResult));
        }
        Commands++;
        int written;
        if (outcome.Status == AdminStatus.Ok)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(response, Ok);
            written = AckSize + outcome.ResultLength;
        }
        else
        {
            Failures++;
            _logger.LogDebug("transport queue: {Command} for device {Id}: {Status}/{Qualifier}", Name(cls, command), id, outcome.Status, outcome.Qualifier);
            BinaryPrimitives.WriteUInt32LittleEndian(response, Error);
            BinaryPrimitives.WriteUInt16LittleEndian(response[AckSize..], (ushort)outcome.Status);
            BinaryPrimitives.WriteUInt16LittleEndian(response[(AckSize + 2)..], (ushort)outcome.Qualifier);
            written = AckSize + Math.Min(4, room);
        }
        var writer = chain.Writer();
        writer.Write(response[..written]);
        return writer.Written;
    }

    /// <summary>Least command-out data per command (binding: shorter fails and changes nothing), or -1 for an unknown one.</summary>
    private static int DataLength(ushort cls, ushort command) => (cls, command) switch
    {
        (DeviceClass, DevList or DevDestroy or DevInfo) => 0,
        (DeviceClass, DevCreate) => 8,
        (DeviceClass, DmaWindowSet) => 16,
        (FeatureClass, DevFeaturesGet or DrvFeaturesGet) => 0,
        (FeatureClass, DrvFeaturesSet) => 16,
        (StatusClass, StatusGet or GenerationGet) => 0,
        (StatusClass, StatusSet) => 8,
        (ConfigClass, CfgRead or CfgWrite) => 8,
        (QueueClass, VqInfo or VqEnable or VqReset or VqGet) => 8,
        (QueueClass, VqSet) => 32,
        (MsiClass, MsiSet) => 16,
        (MsiClass, ConfigVectorSet or MsiGet) => 8,
        (NotifyClass, NotifyInfo) => 0,
        (NotifyClass, Notify) => 8,
        _ => -1,
    };

    /// <summary>Commands that change a device's transport state: refused (EBUSY) while a VMM drives it on its socket.</summary>
    private static bool ChangesTransportState(ushort cls, ushort command) => (cls, command) switch
    {
        (FeatureClass, DrvFeaturesSet) or (StatusClass, StatusSet) or (ConfigClass, CfgWrite) => true,
        (QueueClass, VqSet or VqEnable or VqReset) or (MsiClass, MsiSet or ConfigVectorSet) => true,
        (DeviceClass, DmaWindowSet) => true,
        _ => false,
    };

    private AdminOutcome Execute(ulong id, ushort cls, ushort command, ReadOnlySpan<byte> data, Span<byte> result, int room)
    {
        int needed = DataLength(cls, command);
        if (needed < 0)
            return AdminOutcome.Invalid(AdminQualifier.InvalidOpcode);
        if (data.Length < needed)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (cls == DeviceClass && command is DevList or DevCreate)
        {
            if (id != 0)
                return AdminOutcome.Invalid(AdminQualifier.InvalidMember);
            return command == DevList ? List(result, room) : Create(data, result, room);
        }
        if (id == 0 || !_devices.TryGetValue(id, out var device))
            return AdminOutcome.Invalid(AdminQualifier.InvalidMember);
        if (ChangesTransportState(cls, command) && device.VmmAttached)
            return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        if (room < ResultLength(cls, command))
            return new AdminOutcome(AdminStatus.Enomem, AdminQualifier.InvalidField);
        var t = device.Transport;
        return (cls, command) switch
        {
            (DeviceClass, DevDestroy) => Destroy(device),
            (DeviceClass, DevInfo) => Info(device, result, room),
            (DeviceClass, DmaWindowSet) => Window(device, data),
            (FeatureClass, DevFeaturesGet) => t.DevFeaturesGet(result),
            (FeatureClass, DrvFeaturesSet) => t.DrvFeaturesSet(data),
            (FeatureClass, DrvFeaturesGet) => t.DrvFeaturesGet(result),
            (StatusClass, StatusGet) => t.StatusGet(result),
            (StatusClass, StatusSet) => t.StatusSet(data),
            (StatusClass, GenerationGet) => t.GenerationGet(result),
            (ConfigClass, CfgRead) => t.CfgRead(data, result, room),
            (ConfigClass, CfgWrite) => t.CfgWrite(data),
            (QueueClass, VqInfo) => t.VqInfo(data, result),
            (QueueClass, VqSet) => t.VqSet(data),
            (QueueClass, VqEnable) => t.VqEnable(data),
            (QueueClass, VqReset) => t.VqReset(data),
            (QueueClass, VqGet) => t.VqGet(data, result),
            (MsiClass, MsiSet) => t.MsiSet(data),
            (MsiClass, ConfigVectorSet) => t.ConfigVectorSet(data, result),
            (MsiClass, MsiGet) => t.MsiGet(data, result),
            (NotifyClass, NotifyInfo) => NotifyInformation(result),
            (NotifyClass, Notify) => t.Notify(data),
            _ => AdminOutcome.Invalid(AdminQualifier.InvalidOpcode),
        };
    }

    /// <summary>Fixed result lengths, checked before a command runs so a short result room never leaves a change half-reported.</summary>
    private static int ResultLength(ushort cls, ushort command) => (cls, command) switch
    {
        (DeviceClass, DevInfo) => 16,
        (FeatureClass, DevFeaturesGet or DrvFeaturesGet) => 16,
        (StatusClass, StatusGet) => 8,
        (StatusClass, GenerationGet) => 4,
        (QueueClass, VqInfo) => 8,
        (QueueClass, VqGet) => 32,
        (MsiClass, ConfigVectorSet) => 8,
        (MsiClass, MsiGet) => 16,
        (NotifyClass, NotifyInfo) => 16,
        _ => 0,
    };

    /// <summary>DEV_LIST → {le32 count; le32 reserved; le32 ids[count]}, ids in creation order.</summary>
    private AdminOutcome List(Span<byte> result, int room)
    {
        int length = 8 + 4 * _devices.Count;
        if (room < length)
            return new AdminOutcome(AdminStatus.Enomem, AdminQualifier.InvalidField);
        result[..8].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(result, (uint)_devices.Count);
        int at = 8;
        foreach (var d in _snapshot)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(result[at..], (uint)d.Id);
            at += 4;
        }
        return AdminOutcome.Ok(length);
    }

    /// <summary>
    /// DEV_CREATE {le32 virtio_device_id (1, net); le32 flags (0)} → {le32 device_id; le32 reserved}: a
    /// net device on the switch, untrusted like a VF, its socket listening when the command completes.
    /// </summary>
    private AdminOutcome Create(ReadOnlySpan<byte> data, Span<byte> result, int room)
    {
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(data), flags = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
        if (type != NetDeviceType || flags != 0)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (room < 8)
            return new AdminOutcome(AdminStatus.Enomem, AdminQualifier.InvalidField);
        if (_devices.Count >= MaxDevices)
        {
            _logger.LogLimited(_refusedLog, LogLevel.Warning, "transport queue: DEV_CREATE refused: {Max} managed devices exist (--max-vdevs)", MaxDevices);
            return new AdminOutcome(AdminStatus.Enospc, AdminQualifier.NoResource);
        }
        ulong id = _lastId + 1;
        string path = Path.Combine(_group.Options.SocketDirectory, ManagedDevice.SocketFileName(id));
        UnixSocket listener;
        try
        {
            listener = UnixSocket.Listen(path, access: _group.Server.SocketAccess);
        }
        catch (Exception e) when (e is IOException or NativeException or ArgumentException)
        {
            _logger.LogLimited(_refusedLog, LogLevel.Warning, "transport queue: DEV_CREATE refused: cannot listen on {Path}: {Error}", path, e.Message);
            return new AdminOutcome(AdminStatus.Enospc, AdminQualifier.NoResource);
        }
        _lastId = id;
        var options = _group.Options;
        var net = new NetDevice(ManagedDevice.DeviceName(id), new NetDeviceOptions
        {
            Mac = new Mac(options.MacBase.Value + MacOffset + id),
            QueuePairs = options.QueuePairs,
            Mtu = options.Mtu,
            Trusted = options.TrustVfs,
        }, _group.Switch, action => _group.DataPath.Loop.Post(action), _deviceLogger);
        var backend = _group.Server.CreateBackend(net, _group.DataPath, _deviceLogger);
        var device = new ManagedDevice(id, net, backend, path);
        device.Attach(this, _deviceLogger); // no DMA window until DMA_WINDOW_SET cuts one
        _group.Switch.Attach(net);
        _devices.Add(id, device);
        Publish();
        var server = _group.Server;
        server.Control.Post(() =>
        {
            if (device.Destroyed)
            {
                listener.Dispose();
                try { File.Delete(path); } catch (IOException) { }
                return;
            }
            device.Endpoint = server.Serve(backend, listener, path, _deviceLogger);
        });
        _logger.LogInformation("transport queue: created {Device} (MAC {Mac}) on {Path}", net.Name, net.Mac, path);
        result[..8].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(result, (uint)id);
        return AdminOutcome.Ok(8);
    }

    /// <summary>DEV_DESTROY: the device is reset, its id fails from the next command on, its VMM is disconnected and its socket removed.</summary>
    private AdminOutcome Destroy(ManagedDevice device)
    {
        _devices.Remove(device.Id);
        Publish();
        device.Transport.Reset();
        device.Destroyed = true;
        var server = _group.Server;
        var sw = _group.Switch;
        server.Control.Post(() =>
        {
            if (device.Endpoint is { } endpoint)
            {
                endpoint.Disconnect($"{device.Name} destroyed by the owner (DEV_DESTROY)");
                server.Remove(endpoint);   // removes the socket
            }
            sw.Detach(device.Device);
        });
        _logger.LogInformation("transport queue: destroyed {Device}", device.Name);
        return AdminOutcome.Ok();
    }

    /// <summary>
    /// DEV_INFO → {le32 virtio_device_id; le16 num_queues; le16 max_queue_size; le32 config_size;
    /// le16 max_vectors; le16 reserved}, then, room permitting, the DMA window {le64 base; le64 length}.
    /// </summary>
    private static AdminOutcome Info(ManagedDevice device, Span<byte> result, int room)
    {
        result[..16].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(result, NetDeviceType);
        BinaryPrimitives.WriteUInt16LittleEndian(result[4..], (ushort)device.Device.QueueCount);
        BinaryPrimitives.WriteUInt16LittleEndian(result[6..], (ushort)device.Device.MaxQueueSize);
        BinaryPrimitives.WriteUInt32LittleEndian(result[8..], (uint)device.Device.ConfigSize);
        BinaryPrimitives.WriteUInt16LittleEndian(result[12..], (ushort)ManagedTransport.MaxVectors(device));
        if (room < 32)
            return AdminOutcome.Ok(16);
        BinaryPrimitives.WriteUInt64LittleEndian(result[16..], device.Transport.WindowBase);
        BinaryPrimitives.WriteUInt64LittleEndian(result[24..], device.Transport.WindowLength);
        return AdminOutcome.Ok(32);
    }

    /// <summary>
    /// DMA_WINDOW_SET (1.5, project) {le64 base; le64 length}: the device's own DMA space, a range of
    /// the owner's memory no other managed device's window overlaps. Only while the device is reset.
    /// </summary>
    private AdminOutcome Window(ManagedDevice device, ReadOnlySpan<byte> data)
    {
        ulong start = BinaryPrimitives.ReadUInt64LittleEndian(data), length = BinaryPrimitives.ReadUInt64LittleEndian(data[8..]);
        if (length == 0 || start + length < start || InOtherWindow(device, start, length))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        return device.Transport.SetWindow(start, length);
    }

    /// <summary>NOTIFY_INFO → {u8 bar; u8 reserved[3]; le32 notify_off_multiplier; le64 base_offset}: no doorbell BAR over vhost-user (bar 0); drivers use NOTIFY.</summary>
    private static AdminOutcome NotifyInformation(Span<byte> result)
    {
        result[..16].Clear();
        return AdminOutcome.Ok(16);
    }

    private void Publish() => _snapshot = [.. _devices.Values.OrderBy(d => d.Id)];

    /// <summary>The owner's driver went away (owner reset): managed devices stay, their transport state and windows do not.</summary>
    internal void OwnerReset()
    {
        foreach (var d in _snapshot)
            d.Transport.OwnerGone();
    }

    /// <summary>The owner's memory or dirty log changed (group worker): every window is cut from the new snapshot.</summary>
    internal void OwnerMemoryChanged(GuestMemory memory, DirtyLog? log)
    {
        foreach (var d in _snapshot)
            d.Transport.OwnerMemoryChanged(memory, log);
    }

    // ---- IManagedDeviceHost ----

    public GuestMemory OwnerMemory => OwnerBackend?.WorkerMemory ?? GuestMemory.Empty;
    public DirtyLog? OwnerLog => OwnerBackend?.WorkerLog;

    public void SignalTransportQueue() => OwnerBackend?.Queues[QueueIndex].SignalCall();

    public bool InOtherWindow(ManagedDevice self, ulong address, ulong length)
    {
        foreach (var d in _snapshot)
        {
            var t = d.Transport;
            if (d != self && t.WindowLength > 0 && address < t.WindowBase + t.WindowLength && t.WindowBase < address + length)
                return true;
        }
        return false;
    }
}
