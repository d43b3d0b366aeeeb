using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend;

// Memory table changes. The new snapshot is published to every running ring on its own worker
// before any retired region is unmapped, so no worker can touch an unmapped page.
public sealed partial class VhostUserBackend
{
    private readonly LogRateLimit _unsealedRegionLog = new();
    // Regions added or removed one by one are memory hot-plug worth seeing, but a front end decides how often.
    private readonly LogRateLimit _regionLog = new(burst: 32);

    private void SetMemTable(Message m)
    {
        var regions = MemoryTablePayload.Read(m.Payload, out string? error)
            ?? throw new VhostUserException(MessageErrorKind.MalformedPayload, error!);
        if (regions.Length == 0)
            throw new VhostUserException(MessageErrorKind.BadMemory, "empty memory table");
        foreach (var r in regions)
            if (r.Problem() is { } problem)
                throw new VhostUserException(MessageErrorKind.BadMemory, $"memory region {r.GuestPhysAddr:x}: {problem}");
        var fds = new FileDescriptor[regions.Length];
        for (int i = 0; i < fds.Length; i++)
            fds[i] = m.TakeFd(i);
        var retired = _memory.Replace(regions.Select(r => (r.GuestPhysAddr, r.MemorySize, r.UserspaceAddr, r.MmapOffset)).ToArray(), fds);
        foreach (var region in _memory.Current.Regions)
            WarnIfUnsealed(region);
        PublishMemory(retired);
        _logger.LogLimited(_setupLog, LogLevel.Information, "{Device}: memory table set: {Count} regions, {Size} MiB", _device.Name, regions.Length,
            regions.Sum(r => (double)r.MemorySize) / (1 << 20));
    }

    private void AddMemRegion(Message m)
    {
        var r = SingleRegionPayload.Read(m.Payload);
        if (r.Problem() is { } problem)
        {
            throw new VhostUserException(MessageErrorKind.BadMemory, $"memory region {r.GuestPhysAddr:x}: {problem}");
        }
        WarnIfUnsealed(_memory.Add(r.GuestPhysAddr, r.MemorySize, r.UserspaceAddr, r.MmapOffset, m.TakeFd(0)));
        PublishMemory(Array.Empty<MemoryRegion>());
        _logger.LogLimited(_regionLog, LogLevel.Information, "{Device}: memory region added: gpa 0x{Gpa:x} size 0x{Size:x}", _device.Name, r.GuestPhysAddr, r.MemorySize);
    }

    private void RemoveMemRegion(Message m)
    {
        // The spec lets a front end attach a descriptor here; it is closed with the message.
        var r = SingleRegionPayload.Read(m.Payload);
        var removed = _memory.Remove(r.GuestPhysAddr, r.MemorySize, r.UserspaceAddr);
        PublishMemory(new[] { removed });
        _logger.LogLimited(_regionLog, LogLevel.Information, "{Device}: memory region removed: gpa 0x{Gpa:x}", _device.Name, r.GuestPhysAddr);
    }

    /// <summary>
    /// A region the memory policy let in although its file cannot be sealed: the front end can
    /// crash this process by truncating it, so say so once per accepted region (rate-limited, as
    /// the front end decides how often).
    /// </summary>
    private void WarnIfUnsealed(MemoryRegion region)
    {
        if (region.UnsealedReason is { } reason)
            _logger.LogLimited(_unsealedRegionLog, LogLevel.Warning,
                "{Device}: accepted unsealed memory region {Region} (memory policy allows unsealed memory): it cannot be sealed against shrinking, as {Reason}; a front end that truncates it crashes this process",
                _device.Name, region, reason);
    }

    /// <summary>
    /// Moves every running ring to the current snapshot and retires what the change removed. The move
    /// is handed to every worker that runs a ring of this device (and the pinned worker, where the
    /// owner's transports and other ports' deliveries run), and the control loop waits for them before
    /// it acknowledges the change, so a front end that uses new memory after the ack finds it in use.
    /// It waits at most the loop deadline: a stuck worker fails the request instead of holding the
    /// control loop. The retired regions are unmapped by whichever of those workers finishes last, so
    /// none can touch an unmapped page however late it runs.
    /// </summary>
    private void PublishMemory(IReadOnlyList<MemoryRegion> retired)
    {
        foreach (var (worker, switched) in SwitchWorkers(_memory.Current, retired))
            worker.Loop.Await(switched);
        WarnIfLogTooSmall();
        // Rings waiting for memory to appear may start now.
        foreach (var q in _queues)
            if (!q.Started && q.Kick != null)
                TryStart(q);
    }

    /// <summary>
    /// Unmaps <paramref name="retired"/> once every worker that may still use it has moved on (after a
    /// disconnect: none waits for it; a stuck worker only delays the unmapping).
    /// </summary>
    private void RetireMemory(IReadOnlyList<IDisposable> retired) => SwitchWorkers(_memory.Current, retired);

    /// <summary>The workers that may touch this device's memory: those running its rings, and the pinned one.</summary>
    private List<Worker> MemoryUsers()
    {
        var workers = new List<Worker>();
        if (_pinnedWorker != null)
            workers.Add(_pinnedWorker);
        foreach (var q in _queues)
            if (q.Owner is { } w && !workers.Contains(w))
                workers.Add(w);
        return workers;
    }

    /// <summary>
    /// Moves every running ring of the device, on its worker, to <paramref name="memory"/> and to the
    /// current dirty-log state, and disposes <paramref name="retired"/> (regions, a replaced log) on
    /// whichever worker finishes last.
    /// </summary>
    private List<(Worker Worker, Task<bool> Switched)> SwitchWorkers(GuestMemory memory, IReadOnlyList<IDisposable> retired)
    {
        // Captured here, on the control loop: the workers must not read control-loop state.
        var log = ActiveLog;
        var usedLogAt = Array.ConvertAll(_queues, q => q.LogGuestAddress);
        var workers = MemoryUsers();
        var switched = new List<(Worker, Task<bool>)>(workers.Count);
        if (workers.Count == 0)
        {
            foreach (var r in retired)
                r.Dispose();
            return switched;
        }
        int remaining = workers.Count;
        foreach (var worker in workers)
        {
            // Work handed to a worker runs in order, after every start or stop the control loop
            // handed it before: whatever it saw of the old snapshot, it is done with it here.
            bool Switch()
            {
                if (worker == _pinnedWorker)
                {
                    _workerMemory = memory;
                    _workerLog = log;
                    // Before this worker's share of the retirement below: whatever placed rings in the
                    // old snapshot (managed devices in their owner's memory) moves first.
                    WorkerMemoryChanged?.Invoke(memory, log);
                }
                foreach (var q in _queues)
                {
                    if (q.Owner != worker || !q.Started || q.Transport is { OwnsMemory: true })
                        continue;
                    // Excludes deliveries from other workers: none uses the old memory after this.
                    using (q.Gate.Exclusive())
                    {
                        if (q.Ring.Memory != memory && q.Ring.Remap(memory) is { } error)
                        {
                            q.Ring.Break(error.Kind, $"after a memory table change: {error.Detail}");
                            q.ReportFault();
                        }
                        // Owner-driven rings have no SET_VRING_ADDR: their used ring is logged where it is.
                        q.Ring.SetDirtyLog(log, q.Transport != null ? q.Ring.UsedRing : usedLogAt[q.Index]);
                    }
                }
                if (Interlocked.Decrement(ref remaining) == 0)
                    foreach (var r in retired)
                        r.Dispose();
                return true;
            }
            if (worker.Loop.IsLoopThread)
            {
                switched.Add((worker, Task.FromResult(Switch())));
                continue;
            }
            try
            {
                switched.Add((worker, worker.Loop.Schedule(Switch)));
            }
            catch (LoopStuckException)
            {
                // Known stuck: post anyway so it switches (and the count completes) if it recovers;
                // the caller's wait reports it.
                var pending = new TaskCompletionSource<bool>();
                worker.Loop.Post(() => pending.TrySetResult(Switch()));
                switched.Add((worker, pending.Task));
            }
        }
        return switched;
    }

    private GuestMemory _workerMemory = GuestMemory.Empty;

    /// <summary>
    /// Called on the pinned worker whenever <see cref="WorkerMemory"/> or <see cref="WorkerLog"/>
    /// changes, before anything retired is unmapped: users of this memory other than this device's
    /// own rings (managed devices whose DMA space is a window into it) move their rings there.
    /// </summary>
    public Action<GuestMemory, DirtyLog?>? WorkerMemoryChanged { get; set; }

    /// <summary>
    /// The memory snapshot as the pinned worker sees it: replaced only on that worker, by the changes
    /// the control loop posts there, and unmapped only after it moved on. What the owner's transports
    /// start rings in (they run on the pinned worker), so a memory table change racing a ring start
    /// cannot unmap the memory the ring is being placed in.
    /// </summary>
    public GuestMemory WorkerMemory
    {
        get
        {
            CheckOnPinnedWorker();
            return _workerMemory;
        }
    }
}
