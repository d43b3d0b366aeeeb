using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Group;

/// <summary>
/// A member device driven by the group owner rather than by its own front end: the owner's transport
/// (the legacy interface today; the transport virtqueue and migration next) negotiates features and
/// places rings by guest physical address in the member's own memory table, while the member's
/// front end keeps supplying that memory, its interrupts (call descriptors) and doorbells (kicks).
///
/// Everything runs on the member's pinned worker, the thread that owns its rings: rings start in the
/// memory snapshot the control loop published to that worker (<see cref="VhostUserBackend.WorkerMemory"/>),
/// which stays mapped until the worker itself moves on, so a memory table change cannot unmap memory
/// a ring is being placed in. Rings start and stop through the one sequence every driver uses
/// (<see cref="DeviceQueue.Start"/>).
/// </summary>
public sealed class OwnerDrivenMember : IOwnerTransport
{
    private readonly VhostUserBackend _backend;
    private readonly Action<DeviceQueue> _raise;
    private readonly Action _frontEndReset;
    private readonly ILogger _logger;
    private ulong _features;
    // A DMA space of its own (a managed device's window into its owner's memory), or null: the
    // member's own front end's memory.
    private GuestMemory? _dma;
    private DirtyLog? _dmaLog;

    /// <param name="raise">A ring has used buffers the driver wants to hear about: raise the transport's interrupt.</param>
    /// <param name="frontEndReset">The member's front end reset the device or left: the transport's own state is void.</param>
    /// <param name="ownDmaSpace">Rings live in a DMA space the transport gives (<see cref="SetDmaSpace"/>), not in the front end's memory.</param>
    public OwnerDrivenMember(VhostUserBackend backend, Action<DeviceQueue> raise, Action frontEndReset, ILogger logger, bool ownDmaSpace = false)
    {
        _backend = backend;
        _raise = raise;
        _frontEndReset = frontEndReset;
        _logger = logger;
        if (ownDmaSpace)
            _dma = GuestMemory.Empty;
    }

    /// <summary>Whether the rings live in a DMA space of the transport's own.</summary>
    public bool OwnsMemory => _dma != null;

    /// <summary>
    /// Moves the DMA space (own-DMA transports only; pinned worker): running rings are remapped there
    /// at once, before the caller lets the previous snapshot go. A ring whose memory is gone breaks.
    /// </summary>
    public void SetDmaSpace(GuestMemory memory, DirtyLog? log)
    {
        if (_dma == null)
            throw new InvalidOperationException("this transport uses its front end's memory");
        _dma = memory;
        _dmaLog = log;
        foreach (var q in _backend.Queues)
        {
            if (!q.Started || q.Transport != this)
                continue;
            // Other workers deliver into its receive rings: none may use the old memory after this.
            using (q.Gate.Exclusive())
            {
                if (q.Ring.Memory != memory && q.Ring.Remap(memory) is { } error)
                {
                    q.Ring.Break(error.Kind, $"after its DMA space changed: {error.Detail}");
                    q.ReportFault();
                }
                q.Ring.SetDirtyLog(log, q.Ring.UsedRing);
            }
        }
    }

    private Worker Worker => _backend.PinnedWorker ?? throw new InvalidOperationException("an owner-driven member needs a pinned worker");

    /// <summary>Whether the owner drives the member through this transport now.</summary>
    public bool Claimed => _backend.OwnerTransport == this;

    /// <summary>Takes the member over (returns why not: its own front end drives it).</summary>
    public string? Claim() => _backend.ClaimForOwner(this);

    /// <summary>Owner-side device reset: every ring stopped, the device reset, its front end free to drive it again.</summary>
    public void Release()
    {
        if (_backend.Driver != DeviceDriver.Owner)
            return;
        StopAll();
        _backend.Device.Reset();
        _backend.ReleaseFromOwner(this);
    }

    /// <summary>The owner's driver accepted these features (ring features included).</summary>
    public void SetFeatures(ulong features)
    {
        _features = features;
        _backend.Device.SetDriverFeatures(features);
    }

    /// <summary>
    /// Why ring <paramref name="index"/> could not start at <paramref name="placement"/> in the DMA space
    /// it would start in now, or null: what <see cref="StartRing"/> checks first, for a transport that
    /// accepts a ring before it runs it (a queue enabled before DRIVER_OK).
    /// </summary>
    public string? CheckPlacement(int index, RingPlacement placement)
    {
        if ((uint)index >= (uint)_backend.Queues.Count)
            return $"queue {index} does not exist";
        if (placement.Size > _backend.Device.MaxQueueSize)
            return $"queue size {placement.Size} exceeds the device's {_backend.Device.MaxQueueSize}";
        var memory = _dma ?? _backend.WorkerMemory;
        if (memory.Regions.Count == 0)
            return _dma != null ? "the device has no DMA space (no window into the owner's memory)"
                : "the member's front end has given no memory table (no DMA space)";
        return placement.Check(memory)?.Detail;
    }

    /// <summary>
    /// Starts ring <paramref name="index"/> at <paramref name="placement"/> in the member's memory; a
    /// running one is restarted there. Returns why it cannot start; a refused placement changes nothing.
    /// </summary>
    public string? StartRing(int index, RingPlacement placement)
    {
        // Checked before the running ring is touched: a refused placement changes nothing.
        if (CheckPlacement(index, placement) is { } refused)
            return refused;
        var queues = _backend.Queues;
        var memory = _dma ?? _backend.WorkerMemory;
        var q = queues[index];
        StopRing(index);
        // Logged at the used ring's own address while the member's front end migrates its memory.
        if (q.Start(Worker, memory, placement, _features, nextAvail: 0, transport: this, _dma != null ? _dmaLog : _backend.WorkerLog, placement.Used) is { } error)
        {
            q.Ring.Reset();
            return error.Detail;
        }
        q.Enabled = true;
        _logger.LogDebug("{Device}: owner started queue {Queue} ({Placement})", _backend.Device.Name, index, placement);
        return null;
    }

    /// <summary>Stops an owner-driven ring (queue address 0, or reset).</summary>
    public void StopRing(int index)
    {
        var queues = _backend.Queues;
        if ((uint)index >= (uint)queues.Count || queues[index] is not { Started: true } q || q.Transport != this)
            return;
        q.Stop();
        q.Enabled = false;
        q.Ring.Reset();
    }

    /// <summary>A driver notification for an owner-driven ring: process it now. False if the ring is not running.</summary>
    public bool Notify(int index)
    {
        var queues = _backend.Queues;
        if ((uint)index >= (uint)queues.Count || queues[index] is not { Started: true } q || q.Transport != this)
            return false;
        q.Process();
        return true;
    }

    /// <summary>Whether an owner-driven ring broke the ring rules (the device then needs a reset).</summary>
    public bool Faulted
    {
        get
        {
            var queues = _backend.Queues;
            for (int i = 0; i < queues.Count; i++) // not foreach: read per legacy status access, allocation-free
                if (queues[i].Transport == this && queues[i].Ring.Fault != null)
                    return true;
            return false;
        }
    }

    private void StopAll()
    {
        for (int i = 0; i < _backend.Queues.Count; i++)
            StopRing(i);
        _features = 0;
    }

    void IOwnerTransport.Raise(DeviceQueue queue) => _raise(queue);

    void IOwnerTransport.FrontEndReset()
    {
        StopAll();
        _frontEndReset();
    }
}
