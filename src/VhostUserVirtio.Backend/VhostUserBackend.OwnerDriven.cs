using Microsoft.Extensions.Logging;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Backend;

// A member device driven by the group owner (IOwnerTransport) rather than by its own front end: the
// owner's transport configures the rings by guest physical address in this connection's memory table,
// and this connection's front end keeps only memory, call and kick descriptors. Everything here runs
// on the pinned worker that owns the rings; the control loop only reads the claim flag and refuses
// the front end's own ring and feature set-up while it is set.
public sealed partial class VhostUserBackend
{
    private volatile IOwnerTransport? _ownerTransport;

    /// <summary>Whether the owner drives this device now (its front end's ring and feature set-up is refused).</summary>
    public bool OwnerDriven => _ownerTransport != null;

    /// <summary>
    /// The owner takes the device over. Refused (returns why) while the device's own front end drives
    /// it: features set or a ring running on its behalf.
    /// </summary>
    public string? ClaimForOwner(IOwnerTransport transport)
    {
        CheckOnPinnedWorker();
        if (_ownerTransport == transport)
            return null;
        if (_ownerTransport != null)
            return "another owner transport drives the device";
        if (_featuresSet || _queues.Any(q => q.Started))
            return "the device's own front end drives it";
        _ownerTransport = transport;
        _logger.LogInformation("{Device}: now driven by the owner", _device.Name);
        return null;
    }

    /// <summary>Owner-side device reset: every owner ring stopped, device reset, front end free to drive it again.</summary>
    public void ReleaseFromOwner()
    {
        CheckOnPinnedWorker();
        if (_ownerTransport == null)
            return;
        foreach (var q in _queues)
            StopOwnerRing(q.Index);
        _device.Reset();
        _ownerFeatures = 0;
        _ownerTransport = null;
        _logger.LogInformation("{Device}: reset by the owner", _device.Name);
    }

    /// <summary>The owner's driver accepted these features (ring features included).</summary>
    public void SetOwnerFeatures(ulong features)
    {
        CheckOnPinnedWorker();
        _ownerFeatures = features;
        _device.SetDriverFeatures(features);
    }

    private ulong _ownerFeatures;

    /// <summary>
    /// Starts ring <paramref name="index"/> at guest physical addresses of this connection's memory
    /// table; a running one is restarted there. Returns why it cannot start (nothing changes then).
    /// </summary>
    public string? StartOwnerRing(int index, int size, ulong desc, ulong avail, ulong used)
    {
        CheckOnPinnedWorker();
        var transport = _ownerTransport ?? throw new InvalidOperationException("the owner has not claimed the device");
        if ((uint)index >= (uint)_queues.Length)
            return $"queue {index} does not exist";
        if (size <= 0 || size > _device.MaxQueueSize || (size & (size - 1)) != 0)
            return $"queue size {size} is not a power of two in 1..{_device.MaxQueueSize}";
        var memory = _memory.Current;
        if (memory.Regions.Count == 0)
            return "the member's front end has given no memory table (no DMA space)";
        // Checked before the running ring is touched: a refused address changes nothing.
        if (!RingFits(memory, desc, SplitRing.DescriptorTableSize(size)) || !RingFits(memory, avail, SplitRing.AvailableRingSize(size)) ||
            !RingFits(memory, used, SplitRing.UsedRingSize(size)) || desc % SplitRing.DescriptorAlignment != 0 ||
            avail % SplitRing.AvailableAlignment != 0 || used % SplitRing.UsedAlignment != 0)
            return $"ring (desc 0x{desc:x}, avail 0x{avail:x}, used 0x{used:x}, size {size}) is misaligned or not inside the member's memory";
        var q = _queues[index];
        StopOwnerRing(index);
        var ring = q.Ring;
        ring.Reset();
        q.ClearFaultReport();
        ring.EventIdx = VirtioFeature.Has(_ownerFeatures, VirtioFeature.RingEventIdx);
        ring.IndirectAllowed = VirtioFeature.Has(_ownerFeatures, VirtioFeature.RingIndirectDesc);
        if (ring.Configure(memory, size, desc, avail, used) is { } error)
        {
            ring.Reset();
            return error;
        }
        ring.NextAvail = 0;
        ring.SyncUsedIndex();
        q.Size = size;
        q.Enabled = true;
        q.Transport = transport;
        _device.QueueStarted(q);
        q.Started = true;
        q.AttachTo(_pinnedWorker!);
        _logger.LogDebug("{Device}: owner started queue {Queue} (size {Size}, desc 0x{Desc:x})", _device.Name, index, size, desc);
        return null;
    }

    /// <summary>Stops an owner-driven ring (queue address 0, or reset).</summary>
    public void StopOwnerRing(int index)
    {
        CheckOnPinnedWorker();
        if ((uint)index >= (uint)_queues.Length)
            return;
        var q = _queues[index];
        if (q.Transport == null)
            return;
        if (q.Started)
        {
            q.Detach();
            q.Started = false;
            _device.QueueStopped(q);
        }
        q.Transport = null;
        q.Enabled = false;
        q.Size = 0;
        q.Ring.Reset();
    }

    /// <summary>A driver notification for an owner-driven ring: process it now. False if the ring is not running.</summary>
    public bool NotifyOwnerRing(int index)
    {
        CheckOnPinnedWorker();
        if ((uint)index >= (uint)_queues.Length || !_queues[index].Started || _queues[index].Transport == null)
            return false;
        _queues[index].Process();
        return true;
    }

    /// <summary>Whether an owner-driven ring broke the ring rules (the device then needs a reset).</summary>
    public bool OwnerRingFaulted
    {
        get
        {
            foreach (var q in _queues)
                if (q.Transport != null && q.Ring.Fault != null)
                    return true;
            return false;
        }
    }

    private static bool RingFits(GuestMemory memory, ulong gpa, ulong length) => memory.TryGetSpan(gpa, (int)length, out _);

    private void CheckOnPinnedWorker()
    {
        if (_pinnedWorker == null || !_pinnedWorker.Loop.IsLoopThread)
            throw new InvalidOperationException("owner-driven rings are changed only on the device's pinned worker");
    }

    /// <summary>Front-end requests that would drive the device themselves; refused while the owner drives it.</summary>
    private static bool DrivesTheDevice(FrontendRequest request) => request is FrontendRequest.SetFeatures or
        FrontendRequest.SetVringNum or FrontendRequest.SetVringAddr or FrontendRequest.SetVringBase or
        FrontendRequest.GetVringBase or FrontendRequest.SetVringEnable;

    /// <summary>
    /// A kick descriptor while the owner drives the device is the member's doorbell (LEGACY_NOTIFY_INFO):
    /// swapped on the worker, and a running ring listens to the new one.
    /// </summary>
    private void SetOwnerDoorbell(DeviceQueue q, EventFd? fd)
    {
        EventFd? old = null;
        _pinnedWorker!.Loop.Invoke(() =>
        {
            bool running = q.Started;
            if (running)
                q.Detach();
            old = q.Kick;
            q.Kick = fd;
            if (running)
                q.AttachTo(_pinnedWorker);
        });
        old?.Dispose();
    }

    /// <summary>The front end reset the device or left: the owner's transport state goes with it.</summary>
    private void EndOwnerDrive()
    {
        if (_ownerTransport is not { } transport)
            return;
        _pinnedWorker!.Loop.Invoke(() =>
        {
            foreach (var q in _queues)
                StopOwnerRing(q.Index);
            _ownerFeatures = 0;
            _ownerTransport = null;
            transport.FrontEndReset();
        });
    }
}
