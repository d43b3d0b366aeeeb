using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;

namespace VhostUserVirtio.Devices.Switch;

/// <summary>
/// A learning Ethernet switch joining the ports of one device group. Learns source MACs (with
/// ageing), sends known unicast to the learned port, and floods broadcast, multicast and unknown
/// unicast to every other port. All forwarding runs on one data-path thread (the group's worker),
/// so the MAC table needs no locks; the port list is swapped copy-on-write by the control side.
/// </summary>
public sealed class L2Switch
{
    private struct Entry
    {
        public ISwitchPort Port;
        public long LastSeen;
    }

    private readonly Dictionary<ulong, Entry> _table = new();
    private readonly ILogger _logger;
    private readonly int _maxEntries;
    private volatile ISwitchPort[] _ports = Array.Empty<ISwitchPort>();
    private readonly List<ISwitchPort> _pendingFlush = new();
    private volatile bool _purgeNeeded;

    public L2Switch(ILogger logger, TimeSpan? ageing = null, int maxEntries = 8192)
    {
        _logger = logger;
        AgeingMs = (long)(ageing ?? TimeSpan.FromSeconds(300)).TotalMilliseconds;
        _maxEntries = maxEntries;
    }

    public long AgeingMs { get; }

    public IReadOnlyList<ISwitchPort> Ports => _ports;

    /// <summary>Frames flooded (broadcast, multicast, unknown unicast).</summary>
    public long Floods { get; private set; }

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

    /// <summary>Forwards one frame sent by <paramref name="from"/>. Data-path thread only; allocates nothing.</summary>
    public void Forward(ISwitchPort from, in Frame frame)
    {
        if (frame.Length < 14)
        {
            from.Counters.Drop(DropReason.Runt);
            return;
        }
        Span<byte> eth = stackalloc byte[12];
        frame.CopyPrefix(eth);
        Forward(from, frame, Mac.Read(eth), Mac.Read(eth[6..]));
    }

    /// <summary>Forwards a frame whose addresses the caller already read (saves a second walk of the chain).</summary>
    public void Forward(ISwitchPort from, in Frame frame, Mac dst, Mac src)
    {
        var counters = from.Counters;
        counters.TxPackets++;
        counters.TxBytes += frame.Length;
        long now = Environment.TickCount64;
        if (_purgeNeeded)
        {
            _purgeNeeded = false;
            Sweep(now);
        }
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
        if (!System.Runtime.CompilerServices.Unsafe.IsNullRef(ref e))
        {
            if (e.Port != port)
            {
                _logger.LogDebug("switch: {Mac} moved from {Old} to {New}", src, e.Port.Name, port.Name);
                e.Port = port;
            }
            e.LastSeen = now;
            return;
        }
        if (_table.Count >= _maxEntries && !Sweep(now))
            return; // table full of live entries: this MAC is flooded to until room frees up
        _table[src.Value] = new Entry { Port = port, LastSeen = now };
    }

    /// <summary>Drops aged entries and entries of unplugged ports; true if any room was made.</summary>
    private bool Sweep(long now)
    {
        int before = _table.Count;
        foreach (var (mac, e) in _table)
            if (now - e.LastSeen > AgeingMs || !IsAttached(e.Port))
                _table.Remove(mac);
        return _table.Count < before;
    }

    private bool IsAttached(ISwitchPort port)
    {
        foreach (var p in _ports)
            if (p == port)
                return true;
        return false;
    }

    /// <summary>The live MAC table (data-path thread only; status views go through the worker).</summary>
    public IReadOnlyList<(Mac Mac, string Port, long AgeMs)> Snapshot()
    {
        long now = Environment.TickCount64;
        Sweep(now);
        return _table.Select(kv => (new Mac(kv.Key), kv.Value.Port.Name, now - kv.Value.LastSeen)).ToList();
    }
}
