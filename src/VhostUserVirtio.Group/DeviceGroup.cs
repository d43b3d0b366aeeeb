using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;

namespace VhostUserVirtio.Group;

/// <summary>
/// A virtio-net device group in one process: the owner (PF) and its SR-IOV members (VFs), each on
/// its own socket, joined by a learning switch (plus an optional TAP uplink). Queue pair i of every
/// port runs on the group's worker i mod W (W = the server's workers, counted from the group's home
/// worker), so a worker forwards between the rings of one pair index and delivers into receive rings
/// it runs itself, without locks, as OVS's PMD threads each serve their own queues. The control
/// queue, the owner's transports, the uplink and status run on the home worker.
/// </summary>
public sealed class DeviceGroup : Admin.IAdminGroupState, IDisposable
{
    private readonly VhostUserServer _server;
    private readonly ILoggerFactory _loggers;
    private readonly ILogger _logger;
    // Copy-on-write: SR-IOV enable/disable replaces the list on the control loop while the data path
    // and status readers keep whatever list they took.
    private volatile GroupMember[] _members = [];

    public DeviceGroup(VhostUserServer server, DeviceGroupOptions options, ILoggerFactory loggers)
    {
        if (options.Vfs < 0 || options.Vfs > DeviceGroupOptions.MaxVfs)
            throw new ArgumentOutOfRangeException(nameof(options), $"VFs must be 0..{DeviceGroupOptions.MaxVfs}");
        _server = server;
        _loggers = loggers;
        _logger = loggers.CreateLogger("VhostUserVirtio.Group");
        Options = options;
        DataPath = server.Workers.Next();
        var workers = server.Workers.Workers;
        _pairWorkers = Enumerable.Range(0, Math.Min(workers.Count, options.QueuePairs))
            .Select(i => workers[(DataPath.Position + i) % workers.Count]).ToArray();
        Msix = new Admin.MsixPool(options.Vfs);
        if (options.MaxMacsPerPort < 1 || options.MaxMacsPerPort > DeviceGroupOptions.MaxMacsPerPortLimit)
            throw new ArgumentOutOfRangeException(nameof(options), $"MACs per port must be 1..{DeviceGroupOptions.MaxMacsPerPortLimit}");
        if (options.MaxManagedDevices < 0 || options.MaxManagedDevices > DeviceGroupOptions.MaxManagedDevicesLimit)
            throw new ArgumentOutOfRangeException(nameof(options), $"managed devices must be 0..{DeviceGroupOptions.MaxManagedDevicesLimit}");
        if (options.TransportFeatureBit is < 44 or > 49)
            throw new ArgumentOutOfRangeException(nameof(options), "the transport queue's feature bit must be one VIRTIO 1.4 leaves unallocated (44–49)");
        // Room for every port's full share (owner, VFs, managed devices, uplink): per-port limits, not the table, bind.
        int ports = options.Vfs + options.MaxManagedDevices + 2;
        int maxEntries = Math.Max(L2Switch.DefaultMaxEntries, ports * options.MaxMacsPerPort);
        // The uplink may carry a whole network (other hosts' guests over a tunnel): it gets the room no
        // other port can ever take, and at least one port's share.
        _uplinkMaxMacs = Math.Max(options.MaxMacsPerPort, maxEntries - (ports - 1) * options.MaxMacsPerPort);
        Switch = new L2Switch(loggers.CreateLogger("VhostUserVirtio.Switch"), options.MacAgeing,
            maxEntries: maxEntries, maxMacsPerPort: options.MaxMacsPerPort);
    }

    private readonly int _uplinkMaxMacs;

    public DeviceGroupOptions Options { get; }
    public VhostUserServer Server => _server;
    internal ILoggerFactory Loggers => _loggers;

    /// <summary>The owner's transport queue and its managed devices; null when it offers none.</summary>
    public Transport.TransportQueueProcessor? Transport => (Owner?.Endpoint.Backend.Device as OwnerDevice)?.Transport;
    public Worker DataPath { get; }

    private readonly Worker[] _pairWorkers;

    /// <summary>The workers the group's queue pairs run on, pair 0's (the home worker) first.</summary>
    public IReadOnlyList<Worker> PairWorkers => _pairWorkers;

    /// <summary>The queue pairs <paramref name="worker"/> forwards (pair i runs on <see cref="PairWorkers"/>[i mod count]).</summary>
    public IReadOnlyList<int> PairsServedBy(Worker worker) =>
        Enumerable.Range(0, Options.QueuePairs).Where(i => _pairWorkers[i % _pairWorkers.Length] == worker).ToList();

    /// <summary>
    /// The worker of a port's ring: both rings of queue pair i on worker i mod W; the control queue
    /// (after the pairs) at home. Fixed per index, so a ring's starts, stops and pauses serialize there.
    /// </summary>
    private Worker PlaceRing(int index) =>
        index >= 2 * Options.QueuePairs ? DataPath : _pairWorkers[index / 2 % _pairWorkers.Length];
    public L2Switch Switch { get; }
    public GroupMember? Owner { get; private set; }
    /// <summary>SR-IOV members in VF order (member id = index + 1).</summary>
    public IReadOnlyList<GroupMember> Members => _members;

    /// <summary>NumVFs: members that exist now (0 = VF Enable clear).</summary>
    public int NumVfs => _members.Length;

    public Admin.MsixPool Msix { get; }

    public bool MemberActive(ulong id)
    {
        var members = _members;
        return id >= 1 && id <= (ulong)members.Length && (members[id - 1].Endpoint.IsConnected || members[id - 1].Legacy!.Active);
    }

    /// <summary>
    /// Whether member <paramref name="id"/>'s driver would see a config change now. Read from the admin
    /// queue's worker while the control loop negotiates: a single word each, and only a hint for the
    /// operator, so no lock.
    /// </summary>
    public Protocol.NetMemberReach ReachOf(ulong id)
    {
        var member = id == 0 ? Owner : MemberOf(id);
        if (member == null)
            return Protocol.NetMemberReach.None;
        if (member.Legacy is { Active: true })
            return Protocol.NetMemberReach.DriverAttached | Protocol.NetMemberReach.ConfigVisible;
        if (!member.Endpoint.IsConnected)
            return Protocol.NetMemberReach.None;
        return Protocol.NetMemberReach.DriverAttached |
               ((member.Endpoint.Backend.AckedProtocolFeatures & Protocol.ProtocolFeatures.Config) != 0 ? Protocol.NetMemberReach.ConfigVisible : 0);
    }

    /// <summary>VF <paramref name="id"/>'s legacy register file, or null if there is no such VF.</summary>
    public Legacy.LegacyNetInterface? LegacyOf(ulong id)
    {
        var members = _members;
        return id >= 1 && id <= (ulong)members.Length ? members[id - 1].Legacy : null;
    }

    /// <summary>VF <paramref name="id"/> (1..NumVfs), or null if there is no such VF.</summary>
    public GroupMember? MemberOf(ulong id)
    {
        var members = _members;
        return id >= 1 && id <= (ulong)members.Length ? members[id - 1] : null;
    }

    /// <summary>Member <paramref name="id"/>'s net device: 0 = the owner, 1..NumVfs = a VF.</summary>
    public NetDevice? NetDeviceOf(ulong id)
    {
        var members = _members;
        return id == 0 ? Owner?.Device : id <= (ulong)members.Length ? members[id - 1].Device : null;
    }
    public TapUplink? Uplink { get; private set; }

    /// <summary>Creates the sockets (owner first, then VF1..N) and the uplink. On failure, undoes what it made and throws.</summary>
    public void Start()
    {
        try
        {
            if (!Options.ClientMode && Options.OwnerSocketPath == null && Options.OwnerListener == null && !Directory.Exists(Options.SocketDirectory))
            {
                Directory.CreateDirectory(Options.SocketDirectory);
                // A folder made here lets the socket group in; one that existed keeps what its owner chose.
                _server.SocketAccess?.ApplyToDirectory(Options.SocketDirectory);
            }
            Owner = CreateMember(0);
            _members = Enumerable.Range(1, Options.Vfs).Select(CreateMember).ToArray();
            if (Options.Uplink != null)
                Uplink = TapUplink.Attach(Options.Uplink, Options.Mtu, Switch, DataPath.Loop, _loggers.CreateLogger("VhostUserVirtio.Uplink"), _uplinkMaxMacs);
            _logger.LogInformation("device group ready: owner {Owner}, {Vfs} VF(s), {Pairs} queue pair(s) each{Uplink}",
                Owner.SocketPath, Options.Vfs, Options.QueuePairs, Uplink != null ? ", uplink " + Options.Uplink : "");
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private GroupMember CreateMember(int id)
    {
        string name = GroupMember.DeviceName(id);
        var device = new NetDevice(name, new NetDeviceOptions
        {
            Mac = new Mac(Options.MacBase.Value + (ulong)id),
            QueuePairs = Options.QueuePairs,
            Mtu = Options.Mtu,
            Trusted = id == 0 || Options.TrustVfs,
        }, Switch, action => DataPath.Loop.Post(action), _loggers.CreateLogger("VhostUserVirtio.Net." + name));
        Switch.Attach(device);
        // The owner is served with its admin queue and owner information block on top of the net device.
        IVirtioDevice served = id == 0
            ? new OwnerDevice(device, Options.Vfs, this, _loggers.CreateLogger("VhostUserVirtio.Admin"))
            : device;
        VhostUserEndpoint endpoint;
        if (id == 0 && Options.OwnerListener is { } listener)
            endpoint = _server.Serve(served, listener, "inherited socket", DataPath, PlaceRing);
        else
            endpoint = _server.Serve(served, id == 0 && Options.OwnerSocketPath is { } ownerPath
                ? ownerPath
                : Path.Combine(Options.SocketDirectory, GroupMember.SocketFileName(id)), Options.ClientMode, DataPath, PlaceRing);
        var legacy = id == 0 ? null : new Legacy.LegacyNetInterface(id, device, endpoint.Backend, () => Msix.Assigned(id - 1),
            _loggers.CreateLogger("VhostUserVirtio.Legacy"));
        if (served is OwnerDevice { Transport: { } transport })
        {
            // Managed devices driven through the transport queue live in the owner's memory.
            transport.OwnerBackend = endpoint.Backend;
            endpoint.Backend.WorkerMemoryChanged = transport.OwnerMemoryChanged;
        }
        var member = new GroupMember(id, device, endpoint, legacy);
        if (id != 0)
        {
            endpoint.Backend.OfferConfig = Options.VfConfigSpace;
            endpoint.Backend.StateStore = new Migration.MemberStateStore(member, Msix);
            device.StoppedBy = () => endpoint.Backend.MemberStopped;
        }
        return member;
    }

    /// <summary>
    /// SR-IOV VF Enable through num_vfs (docs/owner-binding.md), on the control loop: 0 → N creates N
    /// fresh members and their sockets; N → 0 disconnects their front ends, resets and removes them
    /// (their sockets go away). Any other change is refused, as PCI refuses it. Returns why a change
    /// was refused, or null.
    /// </summary>
    public string? SetNumVfs(int wanted)
    {
        int current = NumVfs;
        if (wanted == current)
            return null;
        if (wanted < 0 || wanted > Options.Vfs)
            return $"num_vfs {wanted} is outside 0..{Options.Vfs} (total_vfs)";
        if (current != 0 && wanted != 0)
            return $"num_vfs can only change from or to 0 (it is {current})";
        if (wanted == 0)
        {
            var removed = _members;
            _members = [];
            foreach (var m in removed)
            {
                _server.Remove(m.Endpoint);
                Switch.Detach(m.Device);
            }
            _logger.LogInformation("SR-IOV disabled: {Count} VF(s) removed", removed.Length);
        }
        else
        {
            var created = new List<GroupMember>();
            try
            {
                for (int vf = 1; vf <= wanted; vf++)
                    created.Add(CreateMember(vf));
            }
            catch (Exception e) when (e is IOException or ArgumentException)
            {
                foreach (var m in created)
                {
                    _server.Remove(m.Endpoint);
                    Switch.Detach(m.Device);
                }
                return $"VF sockets could not be created: {e.Message}";
            }
            Msix.ResetAll(); // fresh members start from the default vector count
            _members = created.ToArray();
            _logger.LogInformation("SR-IOV enabled: {Count} VF(s)", wanted);
        }
        return null;
    }

    /// <summary>Every device of the group, owner first.</summary>
    public IEnumerable<GroupMember> AllDevices => Owner == null ? _members : _members.Prepend(Owner);

    /// <summary>A consistent view of ports, counters and the MAC table, taken on the data path.</summary>
    public GroupStatus Status() => DataPath.Loop.Invoke(() => new GroupStatus(
        AllDevices.Select(m => new PortStatus(m.Name, m.SocketPath, m.Endpoint.IsConnected, m.Device.LinkUp, m.Device.Mac?.ToString(), Snapshot(m.Device.Counters),
                m.Legacy?.Active == true, m.Device.Trusted, m.Device.Options.QueuePairs, m.Device.ActivePairs, m.Device.Mtu, Queues(m.Endpoint.Backend)))
            .Concat((Transport?.Devices ?? []).Select(d => new PortStatus(d.Name, d.SocketPath, d.VmmAttached || d.Transport.Status != 0,
                d.Device.LinkUp, d.Device.Mac?.ToString(), Snapshot(d.Device.Counters), false, d.Device.Trusted,
                d.Device.Options.QueuePairs, d.Device.ActivePairs, d.Device.Mtu, Queues(d.Backend))))
            .Concat(Uplink == null ? [] : [new PortStatus(Uplink.Name, "", true, true, null, Snapshot(Uplink.Counters))])
            .ToList(),
        Switch.Snapshot().Select(e => new MacEntry(e.Mac.ToString(), e.Port, e.AgeMs)).ToList(),
        Switch.Floods, Switch.DroppedWhileStopped));

    /// <summary>Each ring's state as last set; rings other workers run are read without a hand-off (a status view may be a moment old).</summary>
    private static IReadOnlyList<QueueStatus> Queues(VhostUserBackend backend) =>
        backend.Queues.Select(q => new QueueStatus(q.Index, q.Size, q.Started, q.Enabled, q.Started ? q.Ring.Fault?.ToString() : null)).ToList();

    private static CounterSnapshot Snapshot(PortCounters c) => new(c.TxPackets, c.TxBytes, c.RxPackets, c.RxBytes,
        c.NonZeroDrops().ToDictionary(d => d.Reason.ToString(), d => d.Count), c.LearnedMacs, c.MacsNotLearned,
        new OffloadCounters(c.OffloadsPassedThrough, c.ChecksumsCompleted, c.FramesSegmented, c.SegmentsMade));

    public void Dispose()
    {
        Uplink?.Dispose();
        Uplink = null;
        foreach (var m in AllDevices.ToList())
        {
            _server.Remove(m.Endpoint);
            Switch.Detach(m.Device);
        }
        _members = [];
        Owner = null;
    }
}

/// <param name="LearnedMacs">MACs the switch has learned on the port now.</param>
/// <param name="MacsNotLearned">Sources not learned because the port was at its limit.</param>
/// <param name="Offloads">Offloaded frames delivered to the port: passed on, or finished by the switch.</param>
public sealed record CounterSnapshot(long TxPackets, long TxBytes, long RxPackets, long RxBytes, IReadOnlyDictionary<string, long> Drops,
    int LearnedMacs = 0, long MacsNotLearned = 0, OffloadCounters? Offloads = null);

/// <summary>Offloaded frames for a port (<see cref="Devices.Switch.PortCounters"/>).</summary>
public sealed record OffloadCounters(long PassedThrough, long ChecksumsCompleted, long FramesSegmented, long SegmentsMade)
{
    public bool Any => PassedThrough + ChecksumsCompleted + FramesSegmented != 0;
}

/// <param name="LegacyDriven">A VF the owner drives through its legacy registers (its own front end only supplies memory).</param>
/// <param name="Trusted">The owner's trust: no spoof check, and its driver may change its MAC and receive modes.</param>
/// <param name="QueuePairs">Queue pairs the device offers; <paramref name="ActivePairs"/> those its driver uses (VIRTIO_NET_CTRL_MQ).</param>
/// <param name="Queues">The device's rings (receive/transmit pairs, then its control, admin or transport queues); null for the uplink.</param>
public sealed record PortStatus(string Name, string Socket, bool Connected, bool LinkUp, string? Mac, CounterSnapshot Counters, bool LegacyDriven = false,
    bool Trusted = true, int QueuePairs = 0, int ActivePairs = 0, int Mtu = 0, IReadOnlyList<QueueStatus>? Queues = null);

/// <param name="Size">SET_VRING_NUM's size (0 until set).</param>
/// <param name="Fault">Why a started ring is broken (a guest broke ring rules), or null.</param>
public sealed record QueueStatus(int Index, int Size, bool Started, bool Enabled, string? Fault);

public sealed record MacEntry(string Mac, string Port, long AgeMs);

public sealed record GroupStatus(IReadOnlyList<PortStatus> Ports, IReadOnlyList<MacEntry> MacTable, long Floods, long DroppedWhileStopped = 0);
