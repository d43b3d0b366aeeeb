using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend;

// Dirty-page logging for live migration (vhost-user.rst "Migration"; LOG_SHMFD). QEMU switches it
// while the rings run: SET_LOG_BASE (the bitmap), SET_FEATURES with VHOST_F_LOG_ALL (every write
// into guest memory is logged), SET_VRING_ADDR with VHOST_VRING_F_LOG per ring (used-ring writes are
// logged at log_guest_addr); off in the reverse order, without a message for the log itself. A
// ring's log state changes on its worker, like its memory, and keeps the ring's position; a replaced
// log is unmapped only after every worker moved to the new one.
public sealed partial class VhostUserBackend
{
    private const ulong LogAllMask = 1UL << VirtioFeature.VhostLogAll;

    private readonly LogRateLimit _dirtyLogLimit = new();
    private DirtyLog? _log;        // control loop: from the last SET_LOG_BASE
    private bool _logAll;          // control loop: VHOST_F_LOG_ALL in the last SET_FEATURES
    private DirtyLog? _workerLog;  // the pinned worker's view of ActiveLog

    /// <summary>The log rings mark in: only while LOG_ALL is on and a log was given (control loop).</summary>
    private DirtyLog? ActiveLog => _logAll ? _log : null;

    /// <summary>The log given by the last SET_LOG_BASE (control loop), for diagnostics and tests.</summary>
    public DirtyLog? DirtyLog => _log;

    /// <summary>Whether the device logs its writes now (LOG_ALL on and a log given; control loop).</summary>
    public bool LoggingDirtyPages => ActiveLog != null;

    /// <summary>
    /// The dirty log as the pinned worker sees it (null while logging is off): what the owner's
    /// transports start rings with, since they start them on that worker.
    /// </summary>
    public DirtyLog? WorkerLog
    {
        get
        {
            CheckOnPinnedWorker();
            return _workerLog;
        }
    }

    /// <summary>SET_LOG_BASE: maps the new log, moves every running ring to it, retires the old one. Replies u64 0.</summary>
    private byte[] SetLogBase(Message m)
    {
        var payload = LogPayload.Read(m.Payload);
        ulong size = payload.MmapSize;
        var log = DirtyLog.Map(m.TakeFd(0), size, payload.MmapOffset, _memory.Policy.AllowUnsealed,
            gpa => _logger.LogLimited(_dirtyLogLimit, LogLevel.Warning,
                "{Device}: write at guest address 0x{Gpa:x} lies beyond the {Size}-byte dirty log; it is not logged, so a migration would miss it",
                _device.Name, gpa, size));
        var old = _log;
        _log = log;
        _logger.LogLimited(_setupLog, LogLevel.Information, "{Device}: {Log} set (offset 0x{Offset:x}){Active}", _device.Name, log, payload.MmapOffset,
            _logAll ? "; logging" : "");
        WarnIfLogTooSmall();
        PublishLog(old);
        return BitConverter.GetBytes(0UL);
    }

    /// <summary>VHOST_F_LOG_ALL switched by SET_FEATURES: every running ring starts or stops logging.</summary>
    private void SetLogAll(bool on)
    {
        if (on == _logAll)
            return;
        _logAll = on;
        _logger.LogLimited(_setupLog, LogLevel.Information, "{Device}: dirty logging {State}{Missing}", _device.Name, on ? "on" : "off",
            on && _log == null ? " (no log given yet: nothing is marked until SET_LOG_BASE)" : "");
        PublishLog(null);
    }

    /// <summary>
    /// While the owner drives the device, its front end's SET_FEATURES is honoured for dirty logging
    /// only (migrating the member's memory); the other bits are the owner's. True when
    /// <paramref name="features"/> would switch logging.
    /// </summary>
    private bool SwitchesLogging(ulong features) => ((features & LogAllMask) != 0) != _logAll;

    /// <summary>
    /// A log that does not cover the whole memory table cannot record writes above it: say so (the
    /// front end sizes it; QEMU grows it before a larger table). Rate-limited: the front end decides how often.
    /// </summary>
    private void WarnIfLogTooSmall()
    {
        if (_log is not { } log)
            return;
        ulong end = 0;
        foreach (var r in _memory.Current.Regions)
            end = Math.Max(end, r.GuestEnd);
        if (end > log.CoveredBytes)
            _logger.LogLimited(_dirtyLogLimit, LogLevel.Warning,
                "{Device}: the {Log} does not cover the memory table, which reaches 0x{End:x}; writes above 0x{Covered:x} are not logged",
                _device.Name, log, end, log.CoveredBytes);
    }

    /// <summary>
    /// Hands the current log state to every worker that runs a ring of the device (and the pinned
    /// one), waiting as for a memory change; <paramref name="retired"/> is unmapped once they all moved on.
    /// </summary>
    private void PublishLog(DirtyLog? retired)
    {
        foreach (var (worker, switched) in SwitchWorkers(_memory.Current, retired != null ? [retired] : []))
            worker.Loop.Await(switched);
    }

    /// <summary>SET_VRING_ADDR on a running ring at the same place: only its used-ring logging changes, on its worker.</summary>
    private void SetRingLog(DeviceQueue q, ulong? logGuestAddress)
    {
        q.LogGuestAddress = logGuestAddress;
        var log = ActiveLog;
        q.Owner!.Loop.Invoke(() =>
        {
            using (q.Gate.Exclusive())
                q.Ring.SetDirtyLog(log, logGuestAddress);
        });
        _logger.LogDebug("{Device}: queue {Queue} logs its used ring {Where}", _device.Name, q.Index,
            logGuestAddress is { } at ? $"at 0x{at:x}" : "no more");
    }
}
