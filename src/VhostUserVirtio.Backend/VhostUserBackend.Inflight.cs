using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Backend;

// INFLIGHT_SHMFD (vhost-user.rst "Inflight I/O tracking"): GET_INFLIGHT_FD makes a zeroed buffer and
// hands its descriptor to the front end, which keeps it across back-end restarts; SET_INFLIGHT_FD
// hands a buffer (back) over, and each ring records into its region from its next start, resuming
// from what a previous back end left there. Split rings only: refused once packed rings are negotiated.
public sealed partial class VhostUserBackend
{
    // The buffer GET_INFLIGHT_FD made, kept until SET_INFLIGHT_FD or a reset (libvhost-user's
    // inflight_info); the one SET_INFLIGHT_FD gave, which the rings record into.
    private InflightRegion? _inflightMade;
    private InflightRegion? _inflight;
    private FileDescriptor? _replyFd;

    /// <summary>The inflight buffer the rings record into (SET_INFLIGHT_FD), or null.</summary>
    public InflightRegion? Inflight => _inflight;

    private byte[] GetInflightFd(InflightPayload request)
    {
        CheckInflightAllowed();
        if (request.NumQueues == 0 || request.NumQueues > _queues.Length)
            throw new VhostUserException(MessageErrorKind.IndexOutOfRange,
                $"inflight buffer for {request.NumQueues} queues asked, the device has {_queues.Length}");
        if (request.QueueSize == 0 || request.QueueSize > _device.MaxQueueSize)
            throw new VhostUserException($"inflight buffer for queues of {request.QueueSize} descriptors asked, the device allows 1..{_device.MaxQueueSize}");
        var region = InflightRegion.Create(request.NumQueues, request.QueueSize);
        FileDescriptor copy;
        try
        {
            copy = region.Descriptor.Duplicate();
        }
        catch
        {
            region.Dispose();
            throw;
        }
        _inflightMade?.Dispose();
        _inflightMade = region;
        _replyFd = copy;
        _logger.LogDebug("{Device}: inflight buffer of {Size} bytes made for {Queues} queues of {QueueSize}",
            _device.Name, region.Size, request.NumQueues, request.QueueSize);
        return new InflightPayload(region.Size, 0, request.NumQueues, request.QueueSize).ToArray();
    }

    private void SetInflightFd(Message m)
    {
        var p = InflightPayload.Read(m.Payload);
        var fd = m.TakeFd(0);
        try
        {
            CheckInflightAllowed();
            if (_queues.Any(q => q.Started))
                throw new VhostUserException(MessageErrorKind.InvalidState, "rings run; the inflight buffer is set before they start");
        }
        catch
        {
            fd.Dispose();
            throw;
        }
        // Checked against the device and the file before mapping; the content when each ring starts.
        var region = InflightRegion.Open(fd, p.MmapSize, p.MmapOffset, p.NumQueues, p.QueueSize,
            _queues.Length, _device.MaxQueueSize, _memory.Policy.AllowUnsealed);
        try
        {
            AdoptInflight(region);
        }
        catch
        {
            region.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Makes <paramref name="region"/> the buffer the rings record into, as SET_INFLIGHT_FD does (for a
    /// caller that keeps buffers across restarts itself); queue i records into region i from its next
    /// start. Control loop, every ring stopped. The back end owns the region from now on (disposed on
    /// reset, disconnect or the next one).
    /// </summary>
    public void AdoptInflight(InflightRegion region)
    {
        ArgumentNullException.ThrowIfNull(region);
        if (_queues.Any(q => q.Started))
            throw new VhostUserException(MessageErrorKind.InvalidState, "rings run; the inflight buffer is set before they start");
        if (region.QueueCount > _queues.Length || region.QueueSize > _device.MaxQueueSize)
            throw new VhostUserException($"inflight buffer for {region.QueueCount} queues of {region.QueueSize}, the device has {_queues.Length} of up to {_device.MaxQueueSize}");
        DropInflight();
        _inflight = region;
        for (int i = 0; i < _queues.Length; i++)
            _queues[i].Inflight = i < region.QueueCount ? region.QueueRegion(i) : null;
        _logger.LogLimited(_setupLog, LogLevel.Information, "{Device}: inflight buffer set ({Queues} queues of {QueueSize}); rings resume from it when they start",
            _device.Name, region.QueueCount, region.QueueSize);
    }

    private void CheckInflightAllowed()
    {
        if (VirtioFeature.Has(_ackedFeatures, VirtioFeature.RingPacked))
            throw new VhostUserException(MessageErrorKind.InvalidState, "inflight tracking is implemented for split rings only, and packed rings were negotiated");
        if (OwnerDriven || _ownerTransport != null)
            throw new VhostUserException(MessageErrorKind.InvalidState, "the group owner drives this device's rings");
    }

    /// <summary>Forgets both buffers (every ring stopped: none records into them any more).</summary>
    private void DropInflight()
    {
        foreach (var q in _queues)
            q.Inflight = null;
        _inflight?.Dispose();
        _inflight = null;
        _inflightMade?.Dispose();
        _inflightMade = null;
    }

    /// <summary>The descriptor the reply being built carries, if any (taken by the endpoint).</summary>
    private FileDescriptor? TakeReplyFd()
    {
        var fd = _replyFd;
        _replyFd = null;
        return fd;
    }

    /// <summary>GET_INFLIGHT_FD refused: QEMU reads an mmap_size of 0 as "no buffer" rather than a broken reply.</summary>
    private byte[] NoInflightBuffer()
    {
        _replyFd?.Dispose();
        _replyFd = null;
        return new InflightPayload(0, 0, 0, 0).ToArray();
    }
}
