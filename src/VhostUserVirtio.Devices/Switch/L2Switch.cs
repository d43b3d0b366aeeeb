using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Backend.Diagnostics;

namespace VhostUserVirtio.Devices.Switch;

/// <summary>
/// A learning Ethernet switch joining the ports of one device group. Learns source MACs (with
/// ageing), sends known unicast to the learned port, and floods broadcast, multicast and unknown
/// unicast to every other port. Several data-path workers forward at once (one per queue pair):
/// the MAC table is read without locks (a concurrent dictionary of entries whose port and age are
/// updated in place); learning a new MAC, a move, ageing and purging take one lock, which a stable
/// flow never reaches. Each worker keeps its own counts, pending notifications and a one-entry
/// lookup cache (<see cref="WorkerState"/>); the port list is swapped copy-on-write by the control side.
///
/// No port can take another's room: each learns at most <see cref="MaxMacsPerPort"/> MACs, or its own
/// <see cref="ISwitchPort.MaxLearnedMacs"/> (a source
/// beyond that is not learned; its frame is still forwarded), so a port that sends random source
/// MACs fills only its own share. Work per frame is bounded: aged entries are swept at most once per
/// <see cref="SweepInterval"/>, and only when a port was refused room; until then a port at its
/// limit learns nothing new.
/// </summary>
public sealed class L2Switch
{
    /// <summary>
    /// Default per-port limit: far above what a guest needs (one MAC per vNIC, a few more for a bridge
    /// or containers inside it; a virtio-net driver's own unicast filter holds 64), small enough that a
    /// full group (257 members and an uplink) stays a table of about 16k entries.
    /// </summary>
    public const int DefaultMaxMacsPerPort = 64;
    public const int DefaultMaxEntries = 8192;
    public static readonly TimeSpan SweepInterval = TimeSpan.FromSeconds(1);

    /// <summary>A learned MAC. Its port and last-seen time change in place, so readers never see a torn entry.</summary>
    private sealed class Entry(ISwitchPort port, long lastSeen)
    {
        public volatile ISwitchPort Port = port;
        public long LastSeen = lastSeen;
    }

    /// <summary>
    /// What one worker keeps to itself: its counts, the ports it delivered to in this burst, and the
    /// last destination and source it looked up, valid while the table's epoch has not moved.
    /// </summary>
    private sealed class WorkerState(int lane)
    {
        public readonly int Lane = lane;
        public long Floods;
        public long DroppedWhileStopped;
        public readonly List<ISwitchPort> PendingFlush = new();
        public ulong CachedDestination = ulong.MaxValue;
        public Entry? DestinationEntry;
        public ulong CachedSource = ulong.MaxValue;
        public Entry? SourceEntry;
        public int CachedEpoch;
        public long Lookups;
    }

    private readonly ConcurrentDictionary<ulong, Entry> _table = new();
    private readonly object _learning = new();
    private readonly WorkerState?[] _workers = new WorkerState?[Worker.MaxLanes];
    private readonly ILogger _logger;
    private readonly int _maxEntries;
    private readonly long _sweepIntervalMs = (long)SweepInterval.TotalMilliseconds;
    private volatile ISwitchPort[] _ports = Array.Empty<ISwitchPort>();
    private int _entries;            // under _learning
    private int _epoch;              // moves on every move or removal: cached lookups are then stale
    private int _purgeNeeded;
    private volatile bool _sweepWanted;
    private long _nextSweep = long.MinValue;

    /// <param name="maxEntries">The whole table's limit; size it to ports × <paramref name="maxMacsPerPort"/> so per-port limits are what binds.</param>
    public L2Switch(ILogger logger, TimeSpan? ageing = null, int maxEntries = DefaultMaxEntries, int maxMacsPerPort = DefaultMaxMacsPerPort)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxEntries, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxMacsPerPort, 1);
        _logger = logger;
        AgeingMs = (long)(ageing ?? TimeSpan.FromSeconds(300)).TotalMilliseconds;
        _maxEntries = maxEntries;
        MaxMacsPerPort = maxMacsPerPort;
    }

    public long AgeingMs { get; }

    /// <summary>MACs one port may have learned at a time.</summary>
    public int MaxMacsPerPort { get; }

    public IReadOnlyList<ISwitchPort> Ports => _ports;

    /// <summary>Frames flooded (broadcast, multicast, unknown unicast).</summary>
    public long Floods => SumWorkers(w => Volatile.Read(ref w.Floods));

    /// <summary>
    /// Frames not offered to a port because its owner had stopped it. Counted here, not on the port:
    /// a stopped device's own counters are part of its state and must not move.
    /// </summary>
    public long DroppedWhileStopped => SumWorkers(w => Volatile.Read(ref w.DroppedWhileStopped));

    /// <summary>Table lookups done (destination and source) that the per-worker cache did not answer.</summary>
    public long Lookups => SumWorkers(w => Volatile.Read(ref w.Lookups));

    private long SumWorkers(Func<WorkerState, long> field)
    {
        long total = 0;
        foreach (var w in _workers)
            if (w != null)
                total += field(w);
        return total;
    }

    // The thread-local lane is read once per frame: each read is a call into the TLS resolver here.
    private WorkerState Local => LocalAt(Worker.CurrentLane);

    private WorkerState LocalAt(int lane) => _workers[lane] ?? CreateLocal(lane);

    private WorkerState CreateLocal(int lane)
    {
        var state = new WorkerState(lane);
        return Interlocked.CompareExchange(ref _workers[lane], state, null) ?? state;
    }

    public void Attach(ISwitchPort port)
    {
        lock (_learning)
            _ports = _ports.Append(port).ToArray();
    }

    /// <summary>Unplugs a port. Its learned MACs are purged by the data path before its next lookup.</summary>
    public void Detach(ISwitchPort port)
    {
        lock (_learning)
        {
            _ports = _ports.Where(p => p != port).ToArray();
            Interlocked.Increment(ref _epoch);
        }
        Volatile.Write(ref _purgeNeeded, 1);
    }

    /// <summary>
    /// Forwards one frame sent by <paramref name="from"/>, by the addresses the frame read once.
    /// On a data-path worker (any of them); allocates nothing once the worker has forwarded before.
    /// </summary>
    public void Forward(ISwitchPort from, in Frame frame)
    {
        int lane = Worker.CurrentLane;
        var local = LocalAt(lane);
        var counters = from.Counters.LaneAt(lane);
        counters.TxPackets++;
        counters.TxBytes += frame.Length;
        long now = Environment.TickCount64;
        if (Volatile.Read(ref _purgeNeeded) != 0 && Interlocked.Exchange(ref _purgeNeeded, 0) != 0)
            Sweep(now, purge: true);
        else if (_sweepWanted && now >= Volatile.Read(ref _nextSweep))
            Sweep(now, purge: false);
        // Read before any lookup: an entry found after a change is cached with the newer epoch only.
        int epoch = Volatile.Read(ref _epoch);
        if (local.CachedEpoch != epoch)
        {
            local.CachedEpoch = epoch;
            local.DestinationEntry = local.SourceEntry = null;
        }
        var src = frame.Source;
        var dst = frame.Destination;
        if (!src.IsMulticast && !src.IsZero)
            Learn(local, src, from, now);

        if (!dst.IsMulticast)
        {
            var entry = local.CachedDestination == dst.Value ? local.DestinationEntry : null;
            if (entry == null && _table.TryGetValue(dst.Value, out entry))
            {
                local.Lookups++;
                local.CachedDestination = dst.Value;
                local.DestinationEntry = entry;
            }
            if (entry != null && now - Volatile.Read(ref entry.LastSeen) <= AgeingMs)
            {
                var port = entry.Port;
                if (port == from)
                    counters.Drops[(int)DropReason.Hairpin]++;
                else
                    DeliverTo(local, port, frame, dst);
                return;
            }
        }
        local.Floods++;
        foreach (var port in _ports)
            if (port != from)
                DeliverTo(local, port, frame, dst);
    }

    /// <summary>Sends the notifications the calling worker deferred during a burst. Call after each burst of <see cref="Forward"/>.</summary>
    public void FlushNotifications()
    {
        var pending = Local.PendingFlush;
        for (int i = 0; i < pending.Count; i++)
            pending[i].FlushNotifications();
        pending.Clear();
    }

    private static void DeliverTo(WorkerState local, ISwitchPort port, in Frame frame, Mac dst)
    {
        if (port.Stopped)
        {
            local.DroppedWhileStopped++;
            return;
        }
        var c = port.Counters.LaneAt(local.Lane);
        bool delivered = port.Deliver(frame, dst, out var reason);
        if (delivered)
        {
            c.RxPackets++;
            c.RxBytes += frame.Length;
        }
        else
        {
            c.Drops[(int)reason]++;
        }
        // Flushed even after a refusal: a frame segmented on the way may have left segments in the
        // port's ring before it ran out of buffers, and those are the guest's to see.
        if (!local.PendingFlush.Contains(port))
            local.PendingFlush.Add(port);
    }

    /// <summary>A known source on its own port only refreshes its age (at most once a millisecond); anything else takes the learning lock.</summary>
    private void Learn(WorkerState local, Mac src, ISwitchPort port, long now)
    {
        var e = local.CachedSource == src.Value ? local.SourceEntry : null;
        if (e == null && _table.TryGetValue(src.Value, out e))
        {
            local.Lookups++;
            local.CachedSource = src.Value;
            local.SourceEntry = e;
        }
        if (e != null && e.Port == port)
        {
            // Written only when it changes: two workers sending from one MAC do not bounce the line per frame.
            if (Volatile.Read(ref e.LastSeen) != now)
                Volatile.Write(ref e.LastSeen, now);
            return;
        }
        LearnLocked(src, port, now);
    }

    private void LearnLocked(Mac src, ISwitchPort port, long now)
    {
        lock (_learning)
        {
            if (_table.TryGetValue(src.Value, out var e))
            {
                if (e.Port == port)
                {
                    Volatile.Write(ref e.LastSeen, now);
                    return;
                }
                // The MAC moved (or its entry on another port aged): it leaves the old port's share.
                var old = e.Port;
                old.Counters.AddLearned(-1);
                Interlocked.Increment(ref _epoch);
                if (port.Counters.LearnedMacs >= LimitOf(port))
                {
                    _table.TryRemove(src.Value, out _); // flooded, rather than sent to where it no longer is
                    _entries--;
                    Refuse(port, src);
                    return;
                }
                if (_logger.IsEnabled(LogLevel.Debug))
                    _logger.LogDebug("switch: {Mac} moved from {Old} to {New}", src, old.Name, port.Name);
                Volatile.Write(ref e.LastSeen, now);
                e.Port = port;
                port.Counters.AddLearned(1);
                return;
            }
            if (port.Counters.LearnedMacs >= LimitOf(port) || _entries >= _maxEntries)
            {
                Refuse(port, src);
                return;
            }
            _table[src.Value] = new Entry(port, now);
            _entries++;
            port.Counters.AddLearned(1);
        }
    }

    /// <summary>A source not learned: counted and logged (bounded); the next sweep may free the port's aged entries.</summary>
    private void Refuse(ISwitchPort port, Mac src)
    {
        port.Counters.Local.MacsNotLearned++;
        _sweepWanted = true;
        _logger.LogLimited(port.Counters.LearnLimitLog, LogLevel.Warning,
            "switch: {Port} is at its limit of {Limit} learned MACs (or the table is full): {Mac} is not learned, frames to it are flooded",
            port.Name, LimitOf(port), src);
    }

    private int LimitOf(ISwitchPort port) => port.MaxLearnedMacs ?? MaxMacsPerPort;

    /// <summary>
    /// Drops aged entries, and with <paramref name="purge"/> the entries of unplugged ports, keeping
    /// each port's count right. Bounded by the table size, and run at most once per interval except
    /// after a port was unplugged (a control-plane event).
    /// </summary>
    private void Sweep(long now, bool purge)
    {
        lock (_learning)
        {
            if (!purge && (!_sweepWanted || now < _nextSweep))
                return; // another worker just swept
            _sweepWanted = false;
            Volatile.Write(ref _nextSweep, now + _sweepIntervalMs);
            var ports = _ports;
            bool removed = false;
            foreach (var (mac, e) in _table)
            {
                if (now - Volatile.Read(ref e.LastSeen) > AgeingMs || (purge && Array.IndexOf(ports, e.Port) < 0))
                {
                    _table.TryRemove(mac, out _);
                    _entries--;
                    e.Port.Counters.AddLearned(-1);
                    removed = true;
                }
            }
            if (removed)
                Interlocked.Increment(ref _epoch);
        }
    }

    /// <summary>The live MAC table (from any thread), after dropping aged entries and those of unplugged ports.</summary>
    public IReadOnlyList<(Mac Mac, string Port, long AgeMs)> Snapshot()
    {
        long now = Environment.TickCount64;
        Sweep(now, purge: true);
        return _table.Select(kv => (new Mac(kv.Key), kv.Value.Port.Name, now - Volatile.Read(ref kv.Value.LastSeen))).ToList();
    }
}
