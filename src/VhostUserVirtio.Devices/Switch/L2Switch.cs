using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;

namespace VhostUserVirtio.Devices.Switch;

/// <summary>
/// A learning Ethernet switch joining the ports of one device group. Learns source MACs (with
/// ageing), sends known unicast to the learned port, and floods broadcast, multicast and unknown
/// unicast to every other port. All forwarding runs on one data-path thread (the group's worker),
/// so the MAC table needs no locks; the port list is swapped copy-on-write by the control side.
///
/// No port can take another's room: each learns at most <see cref="MaxMacsPerPort"/> MACs (a source
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

    private struct Entry
    {
        public ISwitchPort Port;
        public long LastSeen;
    }

    private readonly Dictionary<ulong, Entry> _table = new();
    private readonly ILogger _logger;
    private readonly int _maxEntries;
    private readonly long _sweepIntervalMs = (long)SweepInterval.TotalMilliseconds;
    private volatile ISwitchPort[] _ports = Array.Empty<ISwitchPort>();
    private readonly List<ISwitchPort> _pendingFlush = new();
    private volatile bool _purgeNeeded;
    private bool _sweepWanted;
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
    public long Floods { get; private set; }

    /// <summary>
    /// Frames not offered to a port because its owner had stopped it. Counted here, not on the port:
    /// a stopped device's own counters are part of its state and must not move.
    /// </summary>
    public long DroppedWhileStopped { get; private set; }

    public void Attach(ISwitchPort port)
    {
        lock (_table)
            _ports = _ports.Append(port).ToArray();
    }

    /// <summary>Unplugs a port. Its learned MACs are purged by the data path before its next lookup.</summary>
    public void Detach(ISwitchPort port)
    {
        lock (_table)
            _ports = _ports.Where(p => p != port).ToArray();
        _purgeNeeded = true;
    }

    /// <summary>
    /// Forwards one frame sent by <paramref name="from"/>, by the addresses the frame read once.
    /// Data-path thread only; allocates nothing.
    /// </summary>
    public void Forward(ISwitchPort from, in Frame frame)
    {
        var counters = from.Counters;
        counters.TxPackets++;
        counters.TxBytes += frame.Length;
        long now = Environment.TickCount64;
        if (_purgeNeeded)
        {
            _purgeNeeded = false;
            Sweep(now, purge: true);
        }
        else if (_sweepWanted && now >= _nextSweep)
        {
            Sweep(now, purge: false);
        }
        var src = frame.Source;
        var dst = frame.Destination;
        if (!src.IsMulticast && !src.IsZero)
            Learn(src, from, now);

        if (!dst.IsMulticast && _table.TryGetValue(dst.Value, out var entry) && now - entry.LastSeen <= AgeingMs)
        {
            if (entry.Port == from)
                counters.Drop(DropReason.Hairpin);
            else
                DeliverTo(entry.Port, frame, dst);
            return;
        }
        Floods++;
        foreach (var port in _ports)
            if (port != from)
                DeliverTo(port, frame, dst);
    }

    /// <summary>Sends the notifications deferred during a burst. Call after each burst of <see cref="Forward"/>.</summary>
    public void FlushNotifications()
    {
        for (int i = 0; i < _pendingFlush.Count; i++)
            _pendingFlush[i].FlushNotifications();
        _pendingFlush.Clear();
    }

    private void DeliverTo(ISwitchPort port, in Frame frame, Mac dst)
    {
        if (port.Stopped)
        {
            DroppedWhileStopped++;
            return;
        }
        var c = port.Counters;
        if (port.Deliver(frame, dst, out var reason))
        {
            c.RxPackets++;
            c.RxBytes += frame.Length;
            if (!_pendingFlush.Contains(port))
                _pendingFlush.Add(port);
        }
        else
        {
            c.Drop(reason);
        }
    }

    private void Learn(Mac src, ISwitchPort port, long now)
    {
        ref var e = ref CollectionsMarshal.GetValueRefOrNullRef(_table, src.Value);
        if (!Unsafe.IsNullRef(ref e))
        {
            if (e.Port == port)
            {
                e.LastSeen = now;
                return;
            }
            // The MAC moved (or its entry on another port aged): it leaves the old port's share.
            var old = e.Port;
            old.Counters.AddLearned(-1);
            if (port.Counters.LearnedMacs >= MaxMacsPerPort)
            {
                _table.Remove(src.Value); // flooded, rather than sent to where it no longer is
                Refuse(port, src);
                return;
            }
            if (_logger.IsEnabled(LogLevel.Debug))
                _logger.LogDebug("switch: {Mac} moved from {Old} to {New}", src, old.Name, port.Name);
            e.Port = port;
            e.LastSeen = now;
            port.Counters.AddLearned(1);
            return;
        }
        if (port.Counters.LearnedMacs >= MaxMacsPerPort || _table.Count >= _maxEntries)
        {
            Refuse(port, src);
            return;
        }
        _table.Add(src.Value, new Entry { Port = port, LastSeen = now });
        port.Counters.AddLearned(1);
    }

    /// <summary>A source not learned: counted and logged (bounded); the next sweep may free the port's aged entries.</summary>
    private void Refuse(ISwitchPort port, Mac src)
    {
        port.Counters.MacsNotLearned++;
        _sweepWanted = true;
        _logger.LogLimited(port.Counters.LearnLimitLog, LogLevel.Warning,
            "switch: {Port} is at its limit of {Limit} learned MACs (or the table is full): {Mac} is not learned, frames to it are flooded",
            port.Name, MaxMacsPerPort, src);
    }

    /// <summary>
    /// Drops aged entries, and with <paramref name="purge"/> the entries of unplugged ports, keeping
    /// each port's count right. Bounded by the table size, and run at most once per interval except
    /// after a port was unplugged (a control-plane event).
    /// </summary>
    private void Sweep(long now, bool purge)
    {
        _sweepWanted = false;
        _nextSweep = now + _sweepIntervalMs;
        var ports = _ports;
        foreach (var (mac, e) in _table)
        {
            if (now - e.LastSeen > AgeingMs || (purge && Array.IndexOf(ports, e.Port) < 0))
            {
                _table.Remove(mac); // removing the current entry does not disturb the enumeration
                e.Port.Counters.AddLearned(-1);
            }
        }
    }

    /// <summary>The live MAC table (data-path thread only; status views go through the worker).</summary>
    public IReadOnlyList<(Mac Mac, string Port, long AgeMs)> Snapshot()
    {
        long now = Environment.TickCount64;
        Sweep(now, purge: true);
        return _table.Select(kv => (new Mac(kv.Key), kv.Value.Port.Name, now - kv.Value.LastSeen)).ToList();
    }
}
