using System.CommandLine;
using System.CommandLine.Parsing;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Daemon;

/// <summary>Everything the serve command was asked to do, validated.</summary>
internal sealed record DaemonSettings(
    string SocketDirectory,
    int Vfs,
    int QueuePairs,
    int Mtu,
    string? Uplink,
    int Workers,
    int PollMicroseconds,
    bool ClientMode,
    LogLevel LogLevel,
    string? SocketPath,
    int? Fd,
    bool PrintCapabilities,
    MemoryPolicy Memory,
    int MaxMacsPerPort,
    bool TrustVfs,
    Group.Admin.AdminProfile AdminProfile,
    Group.Admin.ResourceObjectOpcodes ResourceObjectOpcodes,
    int MaxVdevs = 64,
    int TransportFeatureBit = 47,
    string? Cpus = null,
    string? MetricsListen = null,
    LogFormat LogFormat = LogFormat.Text,
    string? ControlSocket = null,
    bool VfConfigSpace = true,
    string? SocketGroup = null,
    string? SocketMode = null,
    Devices.Switch.Mac? MacBase = null);

/// <summary>
/// The serve options. Built once per command (root and `serve`) because a System.CommandLine option
/// belongs to the command it was added to. Every rule is a parse-time validator, so a bad command
/// line fails before any socket exists, with System.CommandLine's message and a non-zero exit.
/// </summary>
internal sealed class ServeOptions
{
    private const int MaxQueuePairs = 16;
    private const int MaxWorkers = 64;

    private readonly Option<string> _socketDir = new("--socket-dir")
    {
        Description = "Folder for the group's sockets (pf.sock, vf1.sock ... vfN.sock); created if missing.",
        HelpName = "DIR",
        DefaultValueFactory = _ => "./sockets",
    };

    private readonly Option<int> _vfs = new("--vfs")
    {
        Description = "SR-IOV member devices (VFs) served beside the owner (PF).",
        HelpName = "N",
        DefaultValueFactory = _ => 2,
    };

    private readonly Option<int> _queuePairs = new("--queue-pairs")
    {
        Description = "Receive/transmit queue pairs per device (virtio-net multiqueue).",
        HelpName = "N",
        DefaultValueFactory = _ => 1,
    };

    private readonly Option<int> _mtu = new("--mtu")
    {
        Description = "MTU each device reports (VIRTIO_NET_F_MTU).",
        HelpName = "BYTES",
        DefaultValueFactory = _ => 1500,
    };

    private readonly Option<string?> _uplink = new("--uplink")
    {
        Description = "TAP interface to join to the switch as an uplink (created if missing), so guests reach the host.",
        HelpName = "TAP",
    };

    private readonly Option<int> _maxMacsPerPort = new("--max-macs-per-port")
    {
        Description = "MACs the switch learns per port; a port sending more source MACs fills only its own share (its frames are still forwarded).",
        HelpName = "N",
        DefaultValueFactory = _ => Devices.Switch.L2Switch.DefaultMaxMacsPerPort,
    };

    private readonly Option<int> _maxVdevs = new("--max-vdevs")
    {
        Description = "Managed devices the owner's transport queue may create at once (max_vdevs); 0: no transport queue.",
        HelpName = "N",
        DefaultValueFactory = _ => 64,
    };

    private readonly Option<int> _transportBit = new("--transport-feature-bit")
    {
        Description = "The feature bit the owner offers as VIRTIO_F_TRANSPT_VQ (one of 44–49, which VIRTIO 1.4 leaves unallocated).",
        HelpName = "BIT",
        DefaultValueFactory = _ => 47,
    };

    private readonly Option<Devices.Switch.Mac?> _macBase = new("--mac-base")
    {
        Description = "The owner's MAC; VF N gets this plus N and managed device N this plus 0x10000 plus N. " +
                      "Give each daemon its own when their uplinks share a segment (docs/multi-host.md). Default 02:56:56:00:00:00.",
        HelpName = "MAC",
        CustomParser = MacBaseValue,
    };

    private readonly Option<bool> _trustVfs = new("--trust-vfs")
    {
        Description = "Start VFs trusted: no spoof check on their source MACs, and their drivers may change their MAC and receive modes. " +
                      "By default VFs start untrusted, as SR-IOV VFs do; `admin vf ID trust on` trusts one.",
    };

    private readonly Option<string> _vfConfigSpace = new("--vf-config-space")
    {
        Description = "Offer VHOST_USER_PROTOCOL_F_CONFIG on the VFs: `on` lets front ends that read config space (this project's driver library; DPDK virtio-user after 22.11) see the MAC " +
                      "and link the owner sets; `off` for QEMU guests, whose vhost-user-net never reads it and warns at start that it does not " +
                      "(qemu-configs/README.md: set MAC, MTU and link on QEMU's side).",
        HelpName = "on|off",
        DefaultValueFactory = _ => "on",
    };

    private static readonly Dictionary<string, Group.Admin.ResourceObjectOpcodes> ObjectOpcodes = new()
    {
        ["paragraphs"] = Group.Admin.ResourceObjectOpcodes.Paragraphs,
        ["table"] = Group.Admin.ResourceObjectOpcodes.Table,
    };

    private readonly Option<string> _objectOpcodes = new("--resource-object-opcodes")
    {
        Description = "Which opcodes RESOURCE_OBJ_MODIFY and _QUERY use, as VIRTIO 1.4 contradicts itself: `paragraphs` (MODIFY 0xb, QUERY 0xc, " +
                      "the command text) or `table` (QUERY 0xb, MODIFY 0xc, the opcode table). Linux sends neither.",
        DefaultValueFactory = _ => "paragraphs",
    };

    private static readonly Dictionary<string, Group.Admin.AdminProfile> AdminProfiles = new()
    {
        ["spec"] = Group.Admin.AdminProfile.Spec,
        ["seed"] = Group.Admin.AdminProfile.Seed,
    };

    private readonly Option<string> _adminProfile = new("--admin-profile")
    {
        Description = "Admin commands 0x7 and above: 'spec' (VIRTIO 1.4: capabilities, resource objects, device parts) or " +
                      "'seed' (the device migration proposal: DEV_MODE_GET/SET and DEV_CTX_* at 0x7-0xd for the VFs).",
        HelpName = "PROFILE",
        DefaultValueFactory = _ => "spec",
    };

    private readonly Option<int> _workers = new("--workers")
    {
        Description = "Data-path worker threads shared by all devices.",
        HelpName = "N",
        DefaultValueFactory = _ => 1,
    };

    private readonly Option<string?> _cpus = new("--cpus")
    {
        Description = "Pin the workers to these CPUs, one each in order (wrapping around), as OVS's pmd-cpu-mask places its PMD threads: " +
                      "a list like 1, 0,1 or 2-3 of online CPUs. Unpinned by default.",
        HelpName = "LIST",
    };

    private readonly Option<int> _pollUs = new("--poll-us")
    {
        Description = "Adaptive busy polling: workers keep polling their rings this long after the last packet before sleeping on kicks (0 = never poll).",
        HelpName = "MICROSECONDS",
        DefaultValueFactory = _ => 50,
    };

    private readonly Option<bool> _client = new("--client")
    {
        Description = "Connect to sockets where the front end listens (retrying) instead of listening.",
    };

    private readonly Option<string> _logLevel = new("--log-level")
    {
        Description = "Lowest level logged: trace, debug, information (info), warning (warn), error (err) or critical (crit); `vhost-virtio ctl log-level` changes it at run time.",
        HelpName = "LEVEL",
        DefaultValueFactory = _ => "information",
    };

    private readonly Option<string> _logFormat = new("--log-format")
    {
        Description = "How log lines are written (stderr): text (one line each), json (one JSON object per line) or systemd (journald priority prefixes).",
        HelpName = "FORMAT",
        DefaultValueFactory = _ => "text",
    };

    private readonly Option<string?> _controlSocket = new("--control-socket")
    {
        Description = $"The control socket `vhost-virtio ctl` talks to (default: {Control.ControlServer.FileName} in --socket-dir; none with --socket-path or --fd); `none` disables it.",
        HelpName = "PATH",
    };

    private readonly Option<string?> _socketPath = new("--socket-path")
    {
        Description = "Serve one device on exactly this socket path (libvirt convention).",
        HelpName = "PATH",
    };

    private readonly Option<int?> _fd = new("--fd")
    {
        Description = "Serve one device on this already-listening Unix socket descriptor (libvirt convention).",
        HelpName = "FDNUM",
    };

    private readonly Option<bool> _allowUnsealedMemory = new("--allow-unsealed-memory")
    {
        Description = "Accept guest memory whose file cannot be sealed against shrinking (e.g. DPDK virtio-user's --no-huge memory). " +
            "Only for trusted front ends: a front end that truncates such a file crashes the daemon. Each such region is logged as a warning.",
    };

    private readonly Option<string> _maxGuestMemory = new("--max-guest-memory")
    {
        Description = "Most guest memory one front end may map into the daemon (bytes, or with a K, M, G or T suffix: powers of 1024); larger memory tables are refused.",
        HelpName = "SIZE",
        DefaultValueFactory = _ => "256G",
    };

    private readonly Option<string?> _metricsListen = new("--metrics-listen")
    {
        Description = "Serve the metrics (docs/metrics.md) for Prometheus at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9464. Off by default.",
        HelpName = "ADDR:PORT",
    };

    private readonly Option<string?> _socketGroup = new("--socket-group")
    {
        Description = "Give every vhost-user socket the daemon listens on (and a socket folder it creates) this group, so a front end running as " +
                      "another user in it (libvirt's QEMU: libvirt-qemu) can connect. Without --socket-mode the sockets get 0660.",
        HelpName = "NAME|GID",
    };

    private readonly Option<string?> _socketMode = new("--socket-mode")
    {
        Description = "Permission bits (octal, like 0660) of every vhost-user socket the daemon listens on (the control socket stays 0600), set before it accepts connections; " +
                      "a socket folder it creates gets r-x for the classes that may connect.",
        HelpName = "OCTAL",
    };

    private readonly Option<bool> _printCapabilities = new("--print-capabilities")
    {
        Description = "Print the vhost-user.json capability document and exit.",
    };

    public ServeOptions(Command command)
    {
        _logLevel.AcceptOnlyFromAmong([.. LogSetup.Levels.Keys]);
        _logFormat.AcceptOnlyFromAmong([.. LogSetup.Formats.Keys]);
        _controlSocket.Validators.Add(r =>
        {
            if (string.IsNullOrWhiteSpace(r.GetValueOrDefault<string?>()))
                r.AddError("--control-socket must be a path or none.");
        });
        _adminProfile.AcceptOnlyFromAmong([.. AdminProfiles.Keys]);
        _objectOpcodes.AcceptOnlyFromAmong([.. ObjectOpcodes.Keys]);
        _vfConfigSpace.AcceptOnlyFromAmong("on", "off");
        AddRange(_vfs, 0, Group.DeviceGroupOptions.MaxVfs);
        AddRange(_queuePairs, 1, MaxQueuePairs);
        AddRange(_mtu, 68, 65535);
        AddRange(_workers, 1, MaxWorkers);
        AddRange(_maxMacsPerPort, 1, Group.DeviceGroupOptions.MaxMacsPerPortLimit);
        AddRange(_pollUs, 0, 1_000_000);
        AddRange(_maxVdevs, 0, Group.DeviceGroupOptions.MaxManagedDevicesLimit);
        AddRange(_transportBit, 44, 49);
        _fd.CustomParser = r => CliValues.Int(0, int.MaxValue)(r);
        // A Linux interface name: 1..15 bytes (IFNAMSIZ), no '/', ':' or white space.
        _uplink.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<string?>() is { } name && (name.Length is < 1 or > 15 || name.Any(c => c is '/' or ':' || c <= ' ' || c > '~')))
                r.AddError($"--uplink '{name}' is not an interface name (1 to 15 characters, no '/', ':' or spaces).");
        });
        _socketPath.Validators.Add(r =>
        {
            if (string.IsNullOrWhiteSpace(r.GetValueOrDefault<string?>()))
                r.AddError("--socket-path must not be empty.");
        });

        _maxGuestMemory.Validators.Add(r =>
        {
            if (ParseSize(r.GetValueOrDefault<string>()) is not >= MinGuestMemory)
                r.AddError($"--max-guest-memory must be a size of at least 1M, like 512M, 64G or 1T (got '{r.GetValueOrDefault<string>()}').");
        });

        foreach (var option in new Option[] { _socketDir, _vfs, _queuePairs, _mtu, _uplink, _maxMacsPerPort, _trustVfs, _maxVdevs, _transportBit, _adminProfile, _objectOpcodes, _workers, _cpus, _pollUs, _client,
                     _logLevel, _logFormat, _controlSocket, _socketPath, _fd, _allowUnsealedMemory, _maxGuestMemory, _printCapabilities, _metricsListen, _vfConfigSpace, _socketGroup, _socketMode, _macBase })
            command.Options.Add(option);
        command.Validators.Add(ValidateCombination);
    }

    /// <summary>
    /// A unicast MAC with room above it: every member's MAC (the base plus up to 0x10000 plus a managed
    /// device's id) must keep the base's first octet, so none becomes multicast or wraps.
    /// </summary>
    private static Devices.Switch.Mac? MacBaseValue(System.CommandLine.Parsing.ArgumentResult r)
    {
        var mac = CliValues.Mac(r);
        if (r.Errors.Any())
            return null;
        if (mac.IsMulticast)
            r.AddError($"--mac-base {mac} is a multicast address; the members need unicast MACs (first octet even, e.g. 02:…)");
        else if ((mac.Value + 0x2_0000) >> 40 != mac.Value >> 40)
            r.AddError($"--mac-base {mac} leaves no room for the members' MACs above it (keep the lower three octets under ff:00:00)");
        return mac;
    }

    // A parser, not a validator: a validator reading a value that failed to parse (--vfs x) would throw.
    private static void AddRange(Option<int> option, int min, int max) => option.CustomParser = CliValues.Int(min, max);

    /// <summary>Rules between options: one device via --socket-path xor --fd, which excludes the multi-device ones.</summary>
    private void ValidateCombination(CommandResult r)
    {
        bool path = Given(r, _socketPath), fd = Given(r, _fd);
        if (path && fd)
            r.AddError("--socket-path and --fd are mutually exclusive: give one of them.");
        if ((path || fd) && (Given(r, _socketDir) || Given(r, _vfs)))
            r.AddError($"{(path ? "--socket-path" : "--fd")} serves exactly one device; it cannot be combined with --socket-dir or --vfs.");
        if (fd && Given(r, _client))
            r.AddError("--fd is a listening socket; it cannot be combined with --client.");
    }

    private static bool Given(CommandResult r, Option option) => r.GetResult(option) is { Implicit: false };

    private const ulong MinGuestMemory = 1 << 20;

    /// <summary>"4096", "512M", "64G", "1T" (K/M/G/T are powers of 1024, either case); null when malformed or over 2^64.</summary>
    internal static ulong? ParseSize(string? text)
    {
        if (string.IsNullOrWhiteSpace(text))
            return null;
        text = text.Trim();
        int shift = char.ToUpperInvariant(text[^1]) switch { 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, _ => 0 };
        var digits = shift == 0 ? text : text[..^1];
        if (!ulong.TryParse(digits, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out ulong n)
            || n > ulong.MaxValue >> shift)
            return null;
        return n << shift;
    }

    public DaemonSettings Bind(ParseResult r) => new(
        SocketDirectory: Path.GetFullPath(r.GetValue(_socketDir)!),
        Vfs: r.GetValue(_socketPath) != null || r.GetValue(_fd) != null ? 0 : r.GetValue(_vfs),
        QueuePairs: r.GetValue(_queuePairs),
        Mtu: r.GetValue(_mtu),
        Uplink: r.GetValue(_uplink),
        Workers: r.GetValue(_workers),
        PollMicroseconds: r.GetValue(_pollUs),
        ClientMode: r.GetValue(_client),
        LogLevel: LogSetup.Levels[r.GetValue(_logLevel)!],
        SocketPath: r.GetValue(_socketPath) is { } p ? Path.GetFullPath(p) : null,
        Fd: r.GetValue(_fd),
        PrintCapabilities: r.GetValue(_printCapabilities),
        Memory: new MemoryPolicy
        {
            AllowUnsealed = r.GetValue(_allowUnsealedMemory),
            MaxMappedBytes = ParseSize(r.GetValue(_maxGuestMemory))!.Value,
        },
        MaxMacsPerPort: r.GetValue(_maxMacsPerPort),
        TrustVfs: r.GetValue(_trustVfs),
        AdminProfile: AdminProfiles[r.GetValue(_adminProfile)!],
        ResourceObjectOpcodes: ObjectOpcodes[r.GetValue(_objectOpcodes)!],
        MaxVdevs: r.GetValue(_socketPath) != null || r.GetValue(_fd) != null ? 0 : r.GetValue(_maxVdevs),
        TransportFeatureBit: r.GetValue(_transportBit),
        Cpus: r.GetValue(_cpus),
        MetricsListen: r.GetValue(_metricsListen),
        LogFormat: LogSetup.Formats[r.GetValue(_logFormat)!],
        ControlSocket: ControlSocketPath(r),
        VfConfigSpace: r.GetValue(_vfConfigSpace) == "on",
        SocketGroup: r.GetValue(_socketGroup),
        SocketMode: r.GetValue(_socketMode),
        MacBase: r.GetValue(_macBase));

    /// <summary>The control socket's path, or null for none: given, or beside the group's sockets.</summary>
    private string? ControlSocketPath(ParseResult r) => r.GetValue(_controlSocket) switch
    {
        "none" => null,
        { } given => Path.GetFullPath(given),
        null when r.GetValue(_socketPath) != null || r.GetValue(_fd) != null => null,
        null => Path.Combine(Path.GetFullPath(r.GetValue(_socketDir)!), Control.ControlServer.FileName),
    };
}
