using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend;

/// <summary>A front-end request that is well formed but cannot be honoured; the kind and message say why.</summary>
public sealed class VhostUserException(MessageErrorKind kind, string message) : Exception(message)
{
    public VhostUserException(string message) : this(MessageErrorKind.InvalidValue, message) { }

    public MessageErrorKind Kind { get; } = kind;
}

/// <summary>What the endpoint should do after a message was handled; <paramref name="ReplyFd"/> goes with the reply (the endpoint takes it).</summary>
public readonly record struct HandleResult(byte[]? Reply, bool CloseConnection, FileDescriptor? ReplyFd = null)
{
    public static readonly HandleResult None = new(null, false);
    public static readonly HandleResult Close = new(null, true);
}

/// <summary>
/// The vhost-user state machine of one device and its current front end: feature negotiation,
/// memory table, ring lifecycle (vhost-user.rst "Ring states"), config space, status. Runs on the
/// control loop; hands started rings to workers. Accepts any legal message order and validates
/// everything before acting, so a rejected message changes nothing.
/// </summary>
public sealed partial class VhostUserBackend : IDisposable
{
    /// <summary>Protocol features this back end implements itself, whatever the device.</summary>
    public const ProtocolFeatures CoreProtocolFeatures =
        ProtocolFeatures.Mq | ProtocolFeatures.ReplyAck | ProtocolFeatures.ResetDevice |
        ProtocolFeatures.ConfigureMemSlots | ProtocolFeatures.Status | ProtocolFeatures.LogShmfd | ProtocolFeatures.InflightShmfd;

    private readonly IVirtioDevice _device;
    private readonly WorkerPool _workers;
    private readonly ILogger _logger;
    private readonly DeviceQueue[] _queues;
    private readonly GuestMemoryTable _memory;
    // One limit per kind of peer-triggered warning, per device: a front end that repeats a refused
    // message (or rebuilds a broken ring) in a loop cannot flood the log or stall the control loop.
    private readonly LogRateLimit _refusalLog = new();
    private readonly LogRateLimit _faultLog = new();
    // The front end's set-up lines (memory table, reset, dirty log, inflight buffer): information a
    // front end can repeat at will, so bounded like the warnings.
    private readonly LogRateLimit _setupLog = new(burst: 20, window: TimeSpan.FromSeconds(10));
    private readonly Dictionary<MessageErrorKind, long> _rejections = new();

    private ulong _ackedFeatures;
    private bool _featuresSet;
    private ProtocolFeatures _ackedProtocol;
    private byte _status;
    private bool _owned;

    private readonly Worker? _pinnedWorker;

    /// <param name="pinnedWorker">
    /// The worker every ring of this device runs on, when devices share data-path state (a switch's
    /// ports); null spreads rings over the pool.
    /// </param>
    /// <param name="memoryPolicy">What guest memory the front end may hand over; <see cref="MemoryPolicy.Default"/> when null.</param>
    public VhostUserBackend(IVirtioDevice device, WorkerPool workers, ILogger logger, Worker? pinnedWorker = null, MemoryPolicy? memoryPolicy = null)
    {
        _memory = new GuestMemoryTable(memoryPolicy);
        _device = device;
        _workers = workers;
        _pinnedWorker = pinnedWorker;
        _logger = logger;
        _queues = Enumerable.Range(0, device.QueueCount).Select(i => new DeviceQueue(device, i, logger, _faultLog)).ToArray();
    }

    /// <summary>The worker every ring of this device runs on, when pinned (device groups).</summary>
    public Worker? PinnedWorker => _pinnedWorker;

    /// <summary>
    /// Where the front end's ring with a given index runs, when set (a device group spreading queue
    /// pairs over its workers); otherwise the pinned worker, or the pool's next. Must give the same
    /// worker for an index every time: a ring's starts, stops and pauses serialize on it.
    /// </summary>
    public Func<int, Worker>? Placement { get; init; }

    /// <summary>The worker a front-end ring with this index starts on.</summary>
    private Worker? PlacementOf(int index) => Placement?.Invoke(index) ?? _pinnedWorker;

    /// <summary>The last refused message (control loop), for diagnostics and tests.</summary>
    public MessageError? LastRejection { get; private set; }

    /// <summary>Messages refused so far with this kind (control loop).</summary>
    public long Rejections(MessageErrorKind kind) => _rejections.GetValueOrDefault(kind);

    public IVirtioDevice Device => _device;
    public IReadOnlyList<DeviceQueue> Queues => _queues;
    public GuestMemory Memory => _memory.Current;

    /// <summary>Virtio features offered: the device's plus vhost-user's PROTOCOL_FEATURES and LOG_ALL bits.</summary>
    public ulong OfferedFeatures => _device.Features | VirtioFeature.Mask(VirtioFeature.VhostUserProtocolFeatures) | LogAllMask;

    /// <summary>
    /// Whether VHOST_USER_PROTOCOL_F_CONFIG is offered when the device has a config space. Off for
    /// front ends that never read it (QEMU's vhost-user-net masks it and warns at every start).
    /// Set before a front end connects.
    /// </summary>
    public bool OfferConfig { get; set; } = true;

    /// <summary>Protocol features offered: exactly the ones implemented.</summary>
    public ProtocolFeatures OfferedProtocolFeatures =>
        CoreProtocolFeatures | _device.ExtraProtocolFeatures | (_device.ConfigSize > 0 && OfferConfig ? ProtocolFeatures.Config : 0) |
        (StateStore != null ? ProtocolFeatures.DeviceState : 0);

    public ulong AckedFeatures => _ackedFeatures;
    public ProtocolFeatures AckedProtocolFeatures => _ackedProtocol;
    public byte Status => _status;

    /// <summary>
    /// Handles one message. Returns the reply to send (if any) and whether to drop the connection.
    /// Never throws for anything the front end sent.
    /// </summary>
    public HandleResult Handle(Message message)
    {
        using (message)
        {
            var request = message.Request;
            if (_logger.IsEnabled(LogLevel.Debug))
                _logger.LogDebug("{Device}: <- {Request} ({Size} bytes, {Fds} fds{Need})", _device.Name, request,
                    message.Payload.Length, message.FdCount, message.Header.NeedsReply ? ", need reply" : "");

            if (!MessageRules.TryGet(request, out var rule))
                return Reject(message, default, new(MessageErrorKind.UnknownRequest, $"unsupported request {message.Header.Request} ({request})"));
            if (MessageRules.Validate(request, rule, message.Payload, message.FdCount) is { } malformed)
                return Reject(message, rule, malformed with { Detail = $"malformed {request}: {malformed.Detail}" });
            if (rule.Gate != ProtocolFeatures.None && (_ackedProtocol & rule.Gate) == 0)
                return Reject(message, rule, new(MessageErrorKind.NotNegotiated, $"{request} needs protocol feature {rule.Gate}, which was not negotiated"));
            if (MemberFrozen && ChangesDeviceState(request) && !(request == FrontendRequest.SetFeatures && SwitchesLogging(message.PayloadU64)))
                return Reject(message, rule, new(MessageErrorKind.InvalidState,
                    $"{request} refused: the group owner froze this device; its state does not change until it leaves Freeze"));
            if (OwnerDriven && DrivesTheDevice(request) && !(request == FrontendRequest.SetFeatures && SwitchesLogging(message.PayloadU64)))
                return Reject(message, rule, new(MessageErrorKind.InvalidState,
                    $"{request} refused: the group owner drives this device; its front end supplies memory, call and kick descriptors only"));
            if (_ownerTransport is { OwnsMemory: true } && SuppliesRingResources(request))
                return Reject(message, rule, new(MessageErrorKind.InvalidState,
                    $"{request} refused: the group owner drives this device through its transport queue, in the owner's memory"));

            byte[]? reply;
            try
            {
                reply = Dispatch(message);
            }
            catch (VhostUserException e)
            {
                return Reject(message, rule, new(e.Kind, $"{request} refused: {e.Message}"));
            }
            catch (GuestMemoryException e)
            {
                return Reject(message, rule, new(MessageErrorKind.BadMemory, $"{request} refused: {e.Message}"));
            }
            catch (LoopStuckException e)
            {
                // The data path did not take the change: what the front end asked for did not happen.
                return Reject(message, rule, new(MessageErrorKind.WorkerStuck, $"{request} not carried out: {e.Message}"));
            }
            catch (Exception e)
            {
                _logger.LogLimited(_refusalLog, LogLevel.Error, e, "{Device}: {Request} failed", _device.Name, request);
                return Reject(message, rule, new(MessageErrorKind.Internal, $"{request} failed: {e.Message}"));
            }

            if (reply != null)
                return new HandleResult(reply, false, TakeReplyFd());
            return message.Header.NeedsReply && ReplyAckNegotiated
                ? new HandleResult(BitConverter.GetBytes(0UL), false)
                : HandleResult.None;
        }
    }

    private bool ReplyAckNegotiated => (_ackedProtocol & ProtocolFeatures.ReplyAck) != 0;

    /// <summary>
    /// Logs a refused message and answers as the protocol allows: a failure ack when one was asked
    /// for (REPLY_ACK), the defined error form for GET_CONFIG, and for other requests whose reply the front end
    /// is waiting on, dropping the connection (no reply body can express failure).
    /// </summary>
    private HandleResult Reject(Message message, RequestRule rule, MessageError error)
    {
        LastRejection = error;
        _rejections[error.Kind] = _rejections.GetValueOrDefault(error.Kind) + 1;
        _logger.LogLimited(_refusalLog, LogLevel.Warning, "{Device}: {Reason} ({Kind})", _device.Name, error.Detail, error.Kind);
        if (message.Request == FrontendRequest.GetConfig && rule.HasReplyBody)
            return new HandleResult(Array.Empty<byte>(), false);
        if (message.Request == FrontendRequest.GetInflightFd && rule.HasReplyBody)
            return new HandleResult(NoInflightBuffer(), false);
        // Its u64 reply expresses failure (non-zero); it is awaited only with LOG_SHMFD.
        if (message.Request == FrontendRequest.SetLogBase)
            return (_ackedProtocol & ProtocolFeatures.LogShmfd) != 0 ? new HandleResult(BitConverter.GetBytes(1UL), false) : HandleResult.None;
        if (rule.HasReplyBody)
        {
            _logger.LogLimited(_refusalLog, LogLevel.Warning, "{Device}: closing the connection: {Request} expects a reply that cannot express failure",
                _device.Name, message.Request);
            return HandleResult.Close;
        }
        if (message.Header.NeedsReply && ReplyAckNegotiated)
            return new HandleResult(BitConverter.GetBytes(1UL), false);
        return HandleResult.None;
    }

    private byte[]? Dispatch(Message m)
    {
        var p = m.Payload;
        switch (m.Request)
        {
            case FrontendRequest.GetFeatures:
                return BitConverter.GetBytes(OfferedFeatures);
            case FrontendRequest.SetFeatures:
                SetFeatures(m.PayloadU64);
                return null;
            case FrontendRequest.SetOwner:
                if (_owned)
                    _logger.LogDebug("{Device}: SET_OWNER repeated", _device.Name);
                _owned = true;
                return null;
            case FrontendRequest.ResetOwner:
            case FrontendRequest.ResetDevice:
                _logger.LogLimited(_setupLog, LogLevel.Information, "{Device}: {Request}: rings stopped, device state reset", _device.Name, m.Request);
                ResetDevice();
                return null;
            case FrontendRequest.GetProtocolFeatures:
                return BitConverter.GetBytes((ulong)OfferedProtocolFeatures);
            case FrontendRequest.SetProtocolFeatures:
                SetProtocolFeatures((ProtocolFeatures)m.PayloadU64);
                return null;
            case FrontendRequest.GetQueueNum:
                return BitConverter.GetBytes((ulong)_queues.Length);
            case FrontendRequest.SetMemTable:
                SetMemTable(m);
                return null;
            case FrontendRequest.GetMaxMemSlots:
                return BitConverter.GetBytes((ulong)GuestMemoryTable.MaxSlots);
            case FrontendRequest.AddMemReg:
                AddMemRegion(m);
                return null;
            case FrontendRequest.RemMemReg:
                RemoveMemRegion(m);
                return null;
            case FrontendRequest.SetLogBase:
                return SetLogBase(m);
            case FrontendRequest.SetVringNum:
                SetVringNum(VringState.Read(p));
                return null;
            case FrontendRequest.SetVringAddr:
                SetVringAddr(VringAddress.Read(p));
                return null;
            case FrontendRequest.SetVringBase:
                SetVringBase(VringState.Read(p));
                return null;
            case FrontendRequest.GetVringBase:
                return GetVringBase(VringState.Read(p));
            case FrontendRequest.SetVringKick:
            case FrontendRequest.SetVringCall:
            case FrontendRequest.SetVringErr:
                SetVringFile(m);
                return null;
            case FrontendRequest.SetVringEnable:
                SetVringEnable(VringState.Read(p));
                return null;
            case FrontendRequest.GetConfig:
                return GetConfig(p);
            case FrontendRequest.SetConfig:
                SetConfig(p);
                return null;
            case FrontendRequest.SetStatus:
                SetStatus(m.PayloadU64);
                return null;
            case FrontendRequest.GetStatus:
                return BitConverter.GetBytes((ulong)_status);
            case FrontendRequest.SetDeviceStateFd:
                return SetDeviceStateFd(m);
            case FrontendRequest.CheckDeviceState:
                return CheckDeviceState();
            case FrontendRequest.GetInflightFd:
                return GetInflightFd(InflightPayload.Read(p));
            case FrontendRequest.SetInflightFd:
                SetInflightFd(m);
                return null;
            case FrontendRequest.SendRarp:
                NetControl(m.Request).AnnounceMac(p.AsSpan(0, 6));
                return null;
            case FrontendRequest.NetSetMtu:
                if (!NetControl(m.Request).SetMtu((uint)Math.Min(m.PayloadU64, uint.MaxValue)))
                    throw new VhostUserException($"MTU {m.PayloadU64} is not acceptable to the device");
                return null;
            default:
                throw new VhostUserException(MessageErrorKind.UnknownRequest, $"{m.Request} is not handled by this back end");
        }
    }

    // Gating already ensured the device offered RARP / NET_MTU; a device that offers them implements this.
    private INetDeviceControl NetControl(FrontendRequest request) =>
        _device as INetDeviceControl ?? throw new VhostUserException($"{request} is not supported by a {_device.GetType().Name}");

    /// <summary>
    /// Feature bits a front end may flip while rings run (QEMU toggles dirty logging, VHOST_F_LOG_ALL,
    /// around a migration); every other bit is fixed once a ring runs.
    /// </summary>
    private const ulong RuntimeFeatures = LogAllMask;

    private void SetFeatures(ulong features)
    {
        ulong unknown = features & ~OfferedFeatures;
        if (unknown != 0)
            throw new VhostUserException($"features 0x{features:x} include bits never offered (0x{unknown:x})");
        // The worker reads the negotiated features (header size, mergeable buffers) for every frame:
        // changing them under a running ring would corrupt what it writes into the guest.
        ulong changed = (features ^ _ackedFeatures) & ~RuntimeFeatures;
        if (_featuresSet && changed != 0 && _queues.Any(q => q.Started))
            throw new VhostUserException(MessageErrorKind.InvalidState,
                $"features 0x{features:x} change bits 0x{changed:x} while rings run; stop the rings (GET_VRING_BASE) or reset the device first");
        if (OwnerDriven && SwitchesLogging(features))
        {
            // The owner negotiates the device's features; the front end only migrates its memory.
            SetLogAll((features & LogAllMask) != 0);
            return;
        }
        if (!TryDriveFromFrontEnd())
            throw new VhostUserException(MessageErrorKind.InvalidState, "the group owner drives this device");
        bool deviceChanged = !_featuresSet || changed != 0;
        _ackedFeatures = features;
        _featuresSet = true;
        // LOG_ALL is the back end's, not the device's: switching it leaves the device as it is.
        ulong deviceFeatures = features & ~(VirtioFeature.Mask(VirtioFeature.VhostUserProtocolFeatures) | LogAllMask);
        if (deviceChanged)
            OnDataPath(() => _device.SetDriverFeatures(deviceFeatures));
        SetLogAll((features & LogAllMask) != 0);
        // Without PROTOCOL_FEATURES there is no SET_VRING_ENABLE: rings are enabled at once.
        if (!VirtioFeature.Has(features, VirtioFeature.VhostUserProtocolFeatures))
            foreach (var q in _queues)
                SetEnabled(q, true);
        _logger.LogDebug("{Device}: features 0x{Features:x} accepted", _device.Name, features);
    }

    /// <summary>
    /// Runs device-state changes where the data path reads that state: on the pinned worker when the
    /// device has one (other ports of its switch deliver into it from there), else here.
    /// </summary>
    private void OnDataPath(Action action) => OnDataPath(() => { action(); return true; });

    /// <inheritdoc cref="OnDataPath(Action)"/>
    private T OnDataPath<T>(Func<T> func) => _pinnedWorker != null ? _pinnedWorker.Loop.Invoke(func) : func();

    private void SetProtocolFeatures(ProtocolFeatures features)
    {
        var unknown = features & ~OfferedProtocolFeatures;
        if (unknown != 0)
            throw new VhostUserException($"protocol features {features} include ones never offered ({unknown})");
        _ackedProtocol = features;
    }

    private void SetStatus(ulong value)
    {
        if (value > byte.MaxValue)
            throw new VhostUserException($"status 0x{value:x} does not fit the 8-bit device status");
        var status = (byte)value;
        if ((status & (byte)DeviceStatus.FeaturesOk) != 0 && !_featuresSet)
            status &= unchecked((byte)~DeviceStatus.FeaturesOk); // FEATURES_OK without features: refuse it, as a device would
        _status = status;
        _logger.LogDebug("{Device}: status {Status}", _device.Name, (DeviceStatus)status);
        WarnDriverOkWithoutMemory(status);
    }

    private byte[] GetConfig(byte[] payload)
    {
        var hdr = ConfigHeader.Read(payload);
        CheckConfigRange(hdr, payload.Length);
        var reply = new byte[payload.Length];
        hdr.Write(reply);
        _device.ReadConfig((int)hdr.Offset, reply.AsSpan(ConfigHeader.Length, (int)hdr.Size));
        return reply;
    }

    private void SetConfig(byte[] payload)
    {
        var hdr = ConfigHeader.Read(payload);
        CheckConfigRange(hdr, payload.Length);
        if (hdr.Flags > 1)
            throw new VhostUserException($"unknown SET_CONFIG flags 0x{hdr.Flags:x}");
        if (!_device.WriteConfig((int)hdr.Offset, payload.AsSpan(ConfigHeader.Length, (int)hdr.Size)))
            throw new VhostUserException($"config bytes {hdr.Offset}..{hdr.Offset + hdr.Size} are read-only");
    }

    private void CheckConfigRange(ConfigHeader hdr, int payloadLength)
    {
        if (hdr.Size != payloadLength - ConfigHeader.Length)
            throw new VhostUserException($"config size field {hdr.Size} disagrees with the {payloadLength - ConfigHeader.Length} data bytes sent");
        if ((ulong)hdr.Offset + hdr.Size > (ulong)_device.ConfigSize)
            throw new VhostUserException($"config range {hdr.Offset}+{hdr.Size} is outside the {_device.ConfigSize}-byte config space");
    }

    /// <summary>RESET_DEVICE / RESET_OWNER: every ring stopped and forgotten, device back to its initial state.</summary>
    private void ResetDevice()
    {
        if (_ownerTransport is { OwnsMemory: true })
        {
            // The owner drives the device through its transport queue, in its own memory: a front end
            // that merely connected meanwhile (all its ring set-up refused) resets nothing of it.
            _ackedFeatures = 0;
            _featuresSet = false;
            _logAll = false;
            _status = 0;
            ReleaseFrontEndDrive();
            return;
        }
        EndOwnerDrive();
        foreach (var q in _queues)
            ResetQueue(q);
        _ackedFeatures = 0;
        _featuresSet = false;
        _logAll = false;
        _status = 0;
        DropInflight();
        ReleaseFrontEndDrive();
        OnDataPath(() =>
        {
            _workerLog = null; // LOG_ALL is cleared with the features
            _device.Reset();
        });
    }

    /// <summary>
    /// The front end went away: reset, forget the negotiation and retire its memory. Never throws: a
    /// stuck worker is reported and the memory is unmapped only once every worker has moved past it.
    /// </summary>
    public void Disconnected()
    {
        try
        {
            ResetDevice();
        }
        catch (LoopStuckException e)
        {
            _logger.LogError("{Device}: reset after the front end left is incomplete: {Error}; its memory stays mapped until the worker runs again",
                _device.Name, e.Message);
        }
        _ackedProtocol = ProtocolFeatures.None;
        _owned = false;
        CancelTransfer();
        var retired = new List<IDisposable>(_memory.Clear());
        if (_log != null)
            retired.Add(_log);
        _log = null;
        RetireMemory(retired);
    }

    public void Dispose() => Disconnected();
}
