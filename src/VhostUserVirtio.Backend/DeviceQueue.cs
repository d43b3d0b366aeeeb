using Microsoft.Extensions.Logging;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Backend;

/// <summary>
/// One virtqueue of a served device: the split ring plus its notification descriptors and vhost-user
/// ring state (started/enabled). While started it belongs to one worker; the control loop changes it
/// only through that worker (<see cref="Backend.Worker"/>) or while it is stopped.
/// </summary>
public sealed class DeviceQueue : IReadyHandler
{
    private readonly IVirtioDevice _device;
    private readonly ILogger _logger;
    private ulong _kickToken;
    private bool _faultReported;
    private bool _wantsKicks = true;

    internal DeviceQueue(IVirtioDevice device, int index, ILogger logger)
    {
        _device = device;
        Index = index;
        _logger = logger;
        Ring = new SplitQueue(device.MaxQueueSize);
    }

    public int Index { get; }
    public SplitQueue Ring { get; }

    /// <summary>Set by SET_VRING_NUM.</summary>
    public int Size { get; internal set; }
    /// <summary>Ring addresses as front-end virtual addresses (SET_VRING_ADDR); null until given.</summary>
    internal (ulong Desc, ulong Avail, ulong Used)? UserAddresses { get; set; }
    /// <summary>Next avail index given by SET_VRING_BASE, used when the ring starts.</summary>
    internal ushort Base { get; set; }

    internal EventFd? Kick { get; set; }
    internal EventFd? Call { get; set; }
    internal EventFd? Err { get; set; }

    /// <summary>Started = owned by a worker and processed. Changes only on the owning worker.</summary>
    public bool Started { get; internal set; }
    /// <summary>Enabled (SET_VRING_ENABLE, or implicitly without protocol features).</summary>
    public bool Enabled { get; internal set; }
    internal Worker? Owner { get; set; }

    /// <summary>Set while the owner drives this queue (<see cref="IOwnerTransport"/>): it decides how the driver is interrupted.</summary>
    internal IOwnerTransport? Transport { get; set; }

    /// <summary>Used-buffer notifications sent.</summary>
    public ulong Notifications { get; private set; }

    /// <summary>
    /// Drains the ring through <paramref name="handler"/> (<see cref="SplitQueue.Drain{THandler}"/>),
    /// reports a fault if the guest broke the ring, and notifies the driver if it wants it. The
    /// common loop of every device.
    /// </summary>
    public void Drain<THandler>(ref THandler handler) where THandler : struct, IChainHandler
    {
        // A polling worker will look again soon: keep kicks suppressed until it goes to sleep (Rearm).
        int handled = Ring.Drain(ref handler, rearm: Owner is not { Polling: true });
        if (Ring.Fault != null)
            ReportFault();
        if (handled > 0)
            NotifyIfNeeded();
    }

    /// <summary>Signals the call descriptor if the driver has not suppressed notifications.</summary>
    public void NotifyIfNeeded()
    {
        if (!Ring.NeedsNotification())
            return;
        if (Transport != null)
            Transport.Raise(this);
        else
            SignalCall();
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

    /// <summary>Logs a broken ring once and signals the error descriptor, if the front end gave one.</summary>
    public void ReportFault()
    {
        if (_faultReported || Ring.Fault == null)
            return;
        _faultReported = true;
        _logger.LogWarning("{Device} queue {Queue}: guest broke the ring rules, queue stopped: {Reason}", _device.Name, Index, Ring.Fault);
        Err?.Signal();
    }

    internal void ClearFaultReport() => _faultReported = false;

    /// <summary>Worker side: start listening for kicks and process what is already there.</summary>
    internal void AttachTo(Worker worker)
    {
        Owner = worker;
        _wantsKicks = _device.WantsKicks(Index);
        if (!_wantsKicks)
        {
            Ring.DisableNotification();
            return;
        }
        if (Kick != null)
            _kickToken = worker.Loop.Register(Kick.Descriptor, EpollEvents.In, this);
        worker.Add(this);
        Process();
    }

    /// <summary>Worker side: stop listening for kicks.</summary>
    internal void Detach()
    {
        if (Owner != null)
        {
            if (Kick != null && _wantsKicks)
                Owner.Loop.Unregister(Kick.Descriptor, _kickToken);
            Owner.Remove(this);
            // Leave the ring with kicks enabled, as a driver expects from a device that is not polling.
            Ring.EnableNotification();
        }
        Owner = null;
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

    internal void Process()
    {
        if (!Started || !Ring.IsReady)
            return;
        _device.ProcessQueue(this);
        if (Ring.Fault != null)
            ReportFault();
    }

    public override string ToString() => $"{_device.Name}/q{Index}";
}
