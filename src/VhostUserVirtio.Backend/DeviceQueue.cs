using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Backend;

/// <summary>
/// One virtqueue of a served device: its ring (split or packed, as the driver negotiated) plus its notification descriptors and vhost-user
/// ring state (started/enabled). While started it belongs to one worker; the control loop changes it
/// only through that worker (<see cref="Backend.Worker"/>) or while it is stopped.
/// </summary>
public sealed class DeviceQueue : IReadyHandler, IDeferredWork
{
    private readonly IVirtioDevice _device;
    private readonly ILogger _logger;
    private readonly LogRateLimit _faultLog;
    private ulong _kickToken;
    private bool _faultReported;
    private bool _wantsKicks = true;
    private bool _deferred;
    private bool _listening;
    private readonly SplitQueue _split;
    private PackedQueue? _packed; // made when a driver first negotiates packed rings

    internal DeviceQueue(IVirtioDevice device, int index, ILogger logger, LogRateLimit faultLog)
    {
        _device = device;
        Index = index;
        _logger = logger;
        _faultLog = faultLog;
        Ring = _split = new SplitQueue(device.MaxQueueSize);
    }

    public int Index { get; }
    /// <summary>The ring in use: chosen at <see cref="Start"/> from the negotiated features.</summary>
    public Virtqueue Ring { get; private set; }

    /// <summary>Set by SET_VRING_NUM.</summary>
    public int Size { get; internal set; }
    /// <summary>Ring addresses as front-end virtual addresses (SET_VRING_ADDR); null until given.</summary>
    internal (ulong Desc, ulong Avail, ulong Used)? UserAddresses { get; set; }
    /// <summary>
    /// Where the front end wants used-ring writes logged (SET_VRING_ADDR's log_guest_addr with
    /// VHOST_VRING_F_LOG), or null. Control-loop state; the running ring gets it on its worker.
    /// </summary>
    internal ulong? LogGuestAddress { get; set; }
    /// <summary>
    /// The ring base given by SET_VRING_BASE, used when the ring starts: the next avail index of a
    /// split ring, or a packed ring's avail slot and wrap counter (<see cref="Virtqueue.VringBase"/>).
    /// </summary>
    internal uint Base { get; set; }

    /// <summary>
    /// Where the ring records the chains it takes and completes (INFLIGHT_SHMFD), attached at each
    /// start of a split ring the device's front end drives, which then resumes from what the region
    /// holds (<see cref="SplitQueue.AttachInflight"/>). Set while the ring is stopped; null: no tracking.
    /// A packed ring (or one the group owner's transport drives) starts without tracking.
    /// </summary>
    public InflightQueueRegion? Inflight { get; set; }

    internal EventFd? Kick { get; set; }
    internal EventFd? Call { get; set; }
    internal EventFd? Err { get; set; }

    /// <summary>Started = owned by a worker and processed. Changes only on the owning worker.</summary>
    public bool Started { get; private set; }
    /// <summary>Enabled (SET_VRING_ENABLE, or implicitly without protocol features, or by the owner's transport).</summary>
    public bool Enabled { get; set; }
    internal Worker? Owner { get; private set; }

    /// <summary>Serializes deliveries into this ring from workers other than its owner (<see cref="DeliveryGate"/>).</summary>
    public DeliveryGate Gate { get; } = new();

    /// <summary>Whether the calling thread is the worker that runs this ring.</summary>
    public bool OnOwner => IsRunBy(Worker.Current);

    /// <summary>Whether <paramref name="worker"/> (the caller's, from <see cref="Worker.Current"/>) runs this ring.</summary>
    public bool IsRunBy(Worker? worker) => worker != null && Owner == worker;

    /// <summary>Set while the owner drives this queue (<see cref="IOwnerTransport"/>): it decides how the driver is interrupted.</summary>
    public IOwnerTransport? Transport { get; private set; }

    /// <summary>Used-buffer notifications sent.</summary>
    public ulong Notifications { get; private set; }

    /// <summary>
    /// Starts the ring on <paramref name="worker"/>; call it on that worker. Places the ring in
    /// <paramref name="memory"/>, resumes at <paramref name="nextAvail"/> and the used index found in
    /// guest memory, tells the device, and listens for kicks. This is the one start sequence for every
    /// driver of a device: its own front end and the group owner's transports. A running ring is
    /// stopped first. Returns why the ring cannot start; it is then left stopped and unready.
    /// </summary>
    /// <param name="memory">A snapshot that stays mapped until this worker has moved to a newer one.</param>
    /// <param name="transport">The owner's transport driving the ring, or null for the device's front end.</param>
    /// <param name="nextAvail">The ring base (<see cref="Base"/>): 0 for a fresh ring of either layout but a packed ring's wrap counter (bit 15), which a fresh packed ring has set.</param>
    /// <param name="log">The dirty log while logging is on (<see cref="Virtqueue.SetDirtyLog"/>); like the memory, it stays mapped until this worker moved on.</param>
    /// <param name="usedLogAddress">Where used-ring writes are logged, when they are.</param>
    public RingError? Start(Worker worker, GuestMemory memory, RingPlacement placement, ulong features, uint nextAvail, IOwnerTransport? transport,
        DirtyLog? log = null, ulong? usedLogAddress = null)
    {
        CheckOn(worker);
        Stop();
        bool packed = VirtioFeature.Has(features, VirtioFeature.RingPacked);
        if (packed && transport != null)
            return new RingError(RingErrorKind.SetupFailed, "packed rings are not supported while the group owner drives the device");
        // Other workers may be about to deliver into this ring: they see it either stopped or started.
        using (Gate.Exclusive())
        {
            Ring.Reset();
            _faultReported = false;
            Ring = packed ? _packed ??= new PackedQueue(_device.MaxQueueSize) : _split;
            Ring.Reset();
            Ring.EventIdx = VirtioFeature.Has(features, VirtioFeature.RingEventIdx);
            Ring.IndirectAllowed = VirtioFeature.Has(features, VirtioFeature.RingIndirectDesc);
            if (Ring.Configure(memory, placement) is { } error)
                return error;
            Ring.SetDirtyLog(log, usedLogAddress);
            if (Ring is PackedQueue packedRing)
            {
                if (packedRing.SetVringBase(nextAvail) is { } baseError)
                {
                    Ring.Reset();
                    return baseError;
                }
            }
            else
            {
                _split.NextAvail = (ushort)nextAvail;
                _split.SyncUsedIndex();
                if (Inflight != null && transport == null && _split.AttachInflight(Inflight) is { } inflightError)
                {
                    Ring.Reset();
                    return inflightError;
                }
            }
            Transport = transport;
            _device.QueueStarted(this);
            Started = true;
        }
        try
        {
            AttachTo(worker);
        }
        catch (NativeException e)
        {
            // Listening for kicks failed (epoll refused the descriptor, or is out of memory): undo the
            // start completely rather than leave a ring the device thinks runs but nobody serves.
            using (Gate.Exclusive())
            {
                Owner = null;
                Started = false;
                Transport = null;
                _device.QueueStopped(this);
                Ring.Reset();
            }
            return new RingError(RingErrorKind.SetupFailed, $"cannot listen for kicks: {e.Message}");
        }
        Process(); // buffers the driver made available before the start
        return null;
    }

    /// <summary>Stops a running ring; call it on its worker. Returns the ring's base (<see cref="Virtqueue.VringBase"/>).</summary>
    public uint Stop()
    {
        if (!Started)
            return Ring.VringBase;
        CheckOn(Owner!);
        // Deliveries from other workers finish before, and see the ring stopped after.
        using (Gate.Exclusive())
        {
            Ring.PublishUsed();
            _split.DetachInflight(); // a stopped ring holds no region: the next start attaches (and resumes) again
            Started = false;
            Detach();
            Transport = null;
            _device.QueueStopped(this);
            return Ring.VringBase;
        }
    }

    /// <summary>
    /// The ring could not start (control loop, ring stopped): mark it broken with why, log it and
    /// signal the error descriptor, as a fault found while running would be.
    /// </summary>
    internal void FailToStart(RingError error)
    {
        Ring.Reset();
        _faultReported = false;
        Ring.Break(error);
        ReportFault();
    }

    private static void CheckOn(Worker worker)
    {
        if (!worker.Loop.IsLoopThread)
            throw new InvalidOperationException($"a ring starts and stops only on its worker ({worker.Loop.Name})");
    }

    /// <summary>
    /// Drains the ring through <paramref name="handler"/> (<see cref="Virtqueue.Drain{THandler}"/>),
    /// reports a fault if the guest broke the ring, and notifies the driver if it wants it. When the
    /// drain's budget ran out, the worker comes back to this ring on its next turn, after every other
    /// ready ring and control-loop request had theirs. The common loop of every device.
    /// </summary>
    public void Drain<THandler>(ref THandler handler) where THandler : struct, IChainHandler
    {
        // A polling worker will look again soon: keep kicks suppressed until it goes to sleep (Rearm).
        var result = Ring.Drain(ref handler, rearm: Owner is not { Polling: true });
        if (Ring.Fault != null)
            ReportFault();
        if (result.Handled > 0)
            NotifyIfNeeded();
        if (result.BudgetSpent && !_deferred && Owner is { } worker)
        {
            _deferred = true;
            worker.Loop.Defer(this);
        }
    }

    void IDeferredWork.RunDeferred()
    {
        _deferred = false;
        Process();
    }

    /// <summary>Signals the call descriptor if the driver has not suppressed notifications.</summary>
    public void NotifyIfNeeded()
    {
        Ring.PublishUsed(); // whatever was written back is the driver's, notified or not
        if (Paused || !Ring.NeedsNotification())
            return;
        if (Transport == null)
            SignalCall();
        else if (Owner is { } owner && !owner.Loop.IsLoopThread)
            RaiseOnOwner(owner); // another worker delivered: the owner's transport state is its worker's
        else
            Transport.Raise(this);
    }

    private Action? _raiseOnOwner;
    private int _raiseQueued;

    /// <summary>Has the ring's own worker raise the owner's interrupt (coalesced; one delegate per ring, made once).</summary>
    private void RaiseOnOwner(Worker owner)
    {
        if (Interlocked.Exchange(ref _raiseQueued, 1) != 0)
            return;
        owner.Loop.Post(_raiseOnOwner ??= () =>
        {
            Volatile.Write(ref _raiseQueued, 0);
            if (Started && !Paused && Transport is { } transport)
                transport.Raise(this);
        });
    }

    /// <summary>Signals the call descriptor, if the front end gave one (the interrupt itself).</summary>
    public void SignalCall()
    {
        if (Call != null)
        {
            Call.Signal();
            Notifications++;
        }
    }

    /// <summary>
    /// Logs a broken ring once per set-up (and at most at the device's rate limit however often a
    /// front end sets it up again) and signals the error descriptor, if the front end gave one.
    /// </summary>
    public void ReportFault()
    {
        if (_faultReported || Ring.Fault is not { } fault)
            return;
        _faultReported = true;
        _logger.LogLimited(_faultLog, LogLevel.Warning, "{Device} queue {Queue}: guest broke the ring rules ({Kind}), queue stopped: {Reason}",
            _device.Name, Index, fault.Kind, fault.Detail);
        Err?.Signal();
    }

    /// <summary>Worker side: start listening for kicks (the caller processes what is already there).</summary>
    private void AttachTo(Worker worker)
    {
        Owner = worker;
        _wantsKicks = _device.WantsKicks(Index);
        if (!Paused)
            Listen();
    }

    /// <summary>Worker side: wait on the kick descriptor and let a polling worker look at the ring.</summary>
    private void Listen()
    {
        if (_listening || Owner is not { } worker)
            return;
        _listening = true;
        if (!_wantsKicks)
        {
            Ring.DisableNotification();
            return;
        }
        if (Kick != null)
            _kickToken = worker.Loop.Register(Kick.Descriptor, EpollEvents.In, this);
        worker.Add(this);
    }

    /// <summary>Worker side: stop waiting on kicks; a kick that comes meanwhile stays counted in its eventfd.</summary>
    private void Unlisten()
    {
        if (!_listening || Owner is not { } worker)
            return;
        _listening = false;
        if (!_wantsKicks)
            return;
        if (Kick != null)
            worker.Loop.Unregister(Kick.Descriptor, _kickToken);
        worker.Remove(this);
    }

    /// <summary>
    /// Whether the group owner stopped the member (DEV_MODE_SET): the ring is not touched, nothing is
    /// written back and no interrupt sent; driver notifications stay pending in the kick eventfd and
    /// are processed on <see cref="Resume"/>. Every chain the device took was completed before (chains
    /// are handled whole, on this worker), so nothing stays in flight. Survives a ring restart.
    /// </summary>
    public bool Paused { get; private set; }

    /// <summary>Stops touching the ring (worker side; a stopped ring just remembers it).</summary>
    public void Pause()
    {
        if (Paused)
            return;
        using (Gate.Exclusive())
        {
            Paused = true;
            Ring.PublishUsed(); // every buffer taken is written back before the stop completes
        }
        Unlisten();
    }

    /// <summary>Touches the ring again and processes what the driver made available meanwhile.</summary>
    public void Resume()
    {
        if (!Paused)
            return;
        using (Gate.Exclusive())
            Paused = false;
        if (!Started)
            return;
        Listen();
        Process();
    }

    /// <summary>Worker side: stop listening for kicks.</summary>
    private void Detach()
    {
        if (Owner != null)
        {
            Unlisten();
            // Leave the ring with kicks enabled, as a driver expects from a device that is not polling.
            if (!Paused)
                Ring.EnableNotification();
        }
        Owner = null;
    }

    /// <summary>
    /// Worker side: listens to a new kick descriptor (the doorbell changed while the ring runs). The
    /// caller disposes the old one afterwards.
    /// </summary>
    internal EventFd? SwapKick(EventFd? kick)
    {
        var old = Kick;
        if (!Started || Owner is not { } worker)
        {
            Kick = kick;
            return old;
        }
        CheckOn(worker);
        Detach();
        Kick = kick;
        AttachTo(worker);
        Process();
        return old;
    }

    /// <summary>Polling worker: processes the ring if the driver made buffers available. True if it did.</summary>
    internal bool PollOnce()
    {
        if (!Started || !Ring.IsReady || !Ring.HasPending)
            return false;
        ulong before = Ring.ChainsPopped;
        Process();
        return Ring.ChainsPopped != before;
    }

    /// <summary>Polling worker going to sleep: re-enable kicks; true if buffers arrived meanwhile.</summary>
    internal bool Rearm() => Started && Ring.IsReady && Ring.EnableNotification();

    void IReadyHandler.OnReady(EpollEvents events)
    {
        Kick?.Drain();
        Process();
    }

    /// <summary>Processes the ring now (a kick, a start, an enable, a transport's notify); worker side.</summary>
    public void Process()
    {
        if (!Started || Paused || !Ring.IsReady)
            return;
        _device.ProcessQueue(this);
        if (Ring.Fault != null)
            ReportFault();
    }

    public override string ToString() => $"{_device.Name}/q{Index}";
}
