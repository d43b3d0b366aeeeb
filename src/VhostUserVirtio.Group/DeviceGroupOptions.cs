using VhostUserVirtio.Devices.Switch;

namespace VhostUserVirtio.Group;

/// <summary>How a virtio-net device group is laid out (docs/owner-binding.md: pf.sock, vf1.sock … vfN.sock).</summary>
public sealed record DeviceGroupOptions
{
    public required string SocketDirectory { get; init; }
    /// <summary>SR-IOV members served from the start (NumVFs).</summary>
    public int Vfs { get; init; } = 2;
    /// <summary>Connect to sockets where the front ends listen, instead of listening.</summary>
    public bool ClientMode { get; init; }
    /// <summary>TAP interface joined to the switch as an uplink (created if missing), or null.</summary>
    public string? Uplink { get; init; }
    public int QueuePairs { get; init; } = 1;
    public int Mtu { get; init; } = 1500;
    /// <summary>MAC of the owner; member n gets this plus n (locally administered by default).</summary>
    public Mac MacBase { get; init; } = DefaultMacBase;
    public static readonly Mac DefaultMacBase = new(0x02_56_56_00_00_00);
    public TimeSpan MacAgeing { get; init; } = TimeSpan.FromSeconds(300);
    /// <summary>
    /// MACs the switch learns per port (owner, each VF, the uplink). A port sending more sources fills
    /// only its own share; they are forwarded but not learned. See <see cref="L2Switch.DefaultMaxMacsPerPort"/>.
    /// </summary>
    public int MaxMacsPerPort { get; init; } = L2Switch.DefaultMaxMacsPerPort;
    /// <summary>
    /// Start VFs trusted (no spoof check; their drivers may change their MAC and receive modes). By
    /// default they start untrusted, as SR-IOV VFs do, and the owner trusts one with NET_MEMBER_CTRL.
    /// The owner itself is always trusted.
    /// </summary>
    public bool TrustVfs { get; init; }
    /// <summary>
    /// Offer VHOST_USER_PROTOCOL_F_CONFIG on the VFs, so front ends that read config space (this
    /// project's driver library; DPDK virtio-user after 22.11) see the MAC and link the owner sets.
    /// QEMU's vhost-user-net never reads it: off spares its start-up warning and changes nothing
    /// else for it. The owner always offers it (its information block is read through it).
    /// </summary>
    public bool VfConfigSpace { get; init; } = true;
    /// <summary>Serve the owner on exactly this path instead of SocketDirectory/pf.sock (libvirt's --socket-path).</summary>
    public string? OwnerSocketPath { get; init; }
    /// <summary>Serve the owner on this already-listening socket (libvirt's --fd); the group owns it from then on.</summary>
    public Interop.UnixSocket? OwnerListener { get; init; }

    /// <summary>
    /// What the owner's admin queue offers at opcodes 0x7 and above: VIRTIO 1.4's capabilities, resource
    /// objects and device parts (the default), or the device migration proposal's commands (virtio-comment, 2023) for the VFs.
    /// </summary>
    public Admin.AdminProfile AdminProfile { get; init; } = Admin.AdminProfile.Spec;
    /// <summary>Managed devices the transport queue may create at once (max_vdevs); 0: the owner offers no transport queue.</summary>
    public int MaxManagedDevices { get; init; } = 64;
    public const int MaxManagedDevicesLimit = 4096;
    /// <summary>The feature bit of VIRTIO_F_TRANSPT_VQ (project-assigned; 44–49 are unallocated in VIRTIO 1.4).</summary>
    public int TransportFeatureBit { get; init; } = Protocol.TransportCommand.DefaultFeatureBit;
    /// <summary>Which of VIRTIO 1.4's two readings of the RESOURCE_OBJ_MODIFY/QUERY opcodes the owner uses.</summary>
    public Admin.ResourceObjectOpcodes ResourceObjectOpcodes { get; init; } = Admin.ResourceObjectOpcodes.Paragraphs;

    public const int MaxVfs = 256;
    public const int MaxMacsPerPortLimit = 65536;
}
