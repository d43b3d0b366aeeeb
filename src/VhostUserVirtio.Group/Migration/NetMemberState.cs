using System.Collections.Immutable;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;

namespace VhostUserVirtio.Group.Migration;

/// <summary>
/// The migratable state of a virtio-net member: what a destination member needs to continue where
/// the source stopped. It is encoded as device parts (<see cref="DevicePartsWriter"/>) and decoded with
/// every field checked (<see cref="DevicePartsReader"/>).
///
/// Ring positions are not part of it, as in VIRTIO 1.4: a stopped member has written back every
/// buffer it took, so a split ring's next avail index equals its used index, which guest memory
/// already holds (<see cref="RingResume"/> derives it there on restore).
/// </summary>
public sealed record NetMemberState
{
    /// <summary>DEV_FEATURES: what the device offers (verified on restore, never set).</summary>
    public required ulong DeviceFeatures { get; init; }
    /// <summary>DRV_FEATURES: what the driver accepted.</summary>
    public required ulong DriverFeatures { get; init; }
    /// <summary>PCI_COMMON_CFG config_msix_vector.</summary>
    public ushort ConfigVector { get; init; } = DeviceParts.NoVector;
    /// <summary>DEVICE_STATUS.</summary>
    public byte Status { get; init; }
    /// <summary>VQ_CFG, one per queue; their number is PCI_COMMON_CFG num_queues.</summary>
    public required ImmutableArray<VirtqueueState> Queues { get; init; }

    /// <summary>The device's MAC (CVQ MAC_ADDR_SET); null when it has none.</summary>
    public Mac? Mac { get; init; }
    /// <summary>CVQ MAC_TABLE_SET unicast table.</summary>
    public ImmutableArray<Mac> UnicastTable { get; init; } = [];
    /// <summary>CVQ MAC_TABLE_SET multicast table.</summary>
    public ImmutableArray<Mac> MulticastTable { get; init; } = [];
    /// <summary>CVQ RX class: the six receive modes.</summary>
    public ReceiveModes Modes { get; init; } = ReceiveModes.Initial;
    /// <summary>CVQ MQ VQ_PAIRS_SET.</summary>
    public ushort ActivePairs { get; init; } = 1;

    /// <summary>Project part: link up (config status LINK_UP).</summary>
    public bool LinkUp { get; init; } = true;
    /// <summary>Project part: the owner's trust (no spoof check; the driver may change MAC and receive modes).</summary>
    public bool Trusted { get; init; }
    /// <summary>Project part: MSI-X vectors assigned to the member (its MSI-X table size).</summary>
    public ushort MsixVectors { get; init; }
    /// <summary>Project part (OPTIONAL): the member's port counters.</summary>
    public MemberCounters Counters { get; init; } = MemberCounters.Zero;

    public bool Equals(NetMemberState? other) =>
        other is not null && DeviceFeatures == other.DeviceFeatures && DriverFeatures == other.DriverFeatures &&
        ConfigVector == other.ConfigVector && Status == other.Status && Queues.SequenceEqual(other.Queues) &&
        Mac == other.Mac && UnicastTable.SequenceEqual(other.UnicastTable) && MulticastTable.SequenceEqual(other.MulticastTable) &&
        Modes == other.Modes && ActivePairs == other.ActivePairs && LinkUp == other.LinkUp && Trusted == other.Trusted &&
        MsixVectors == other.MsixVectors && Counters.Equals(other.Counters);

    public override int GetHashCode() => HashCode.Combine(DeviceFeatures, DriverFeatures, Status, Queues.Length, Mac, ActivePairs, MsixVectors);
}

/// <summary>
/// struct virtio_dev_part_vq_cfg: the driver's configuration of one queue. Addresses are guest
/// physical (the member's DMA space). Size 0 means the driver never set the queue up.
/// </summary>
public readonly record struct VirtqueueState(ushort Size, ushort Vector, bool Enabled, ulong Descriptors, ulong Driver, ulong Device)
{
    public static readonly VirtqueueState Unused = new(0, DeviceParts.NoVector, false, 0, 0, 0);
}

/// <summary>The virtio-net receive modes (VIRTIO_NET_CTRL_RX commands 0–5), in command order.</summary>
public readonly record struct ReceiveModes(bool Promiscuous, bool AllMulticast, bool AllUnicast, bool NoMulticast, bool NoUnicast, bool NoBroadcast)
{
    /// <summary>A device before its driver sets a filter (see <see cref="NetReceiveFilter"/>).</summary>
    public static readonly ReceiveModes Initial = new(true, true, false, false, false, false);

    public const int Count = 6;

    /// <summary>Mode of RX command <paramref name="command"/> (0 PROMISC … 5 NOBCAST).</summary>
    public bool Get(int command) => command switch
    {
        VirtioNet.CtrlRxPromisc => Promiscuous,
        VirtioNet.CtrlRxAllMulti => AllMulticast,
        VirtioNet.CtrlRxAllUni => AllUnicast,
        VirtioNet.CtrlRxNoMulti => NoMulticast,
        VirtioNet.CtrlRxNoUni => NoUnicast,
        _ => NoBroadcast,
    };

    public ReceiveModes With(int command, bool on) => command switch
    {
        VirtioNet.CtrlRxPromisc => this with { Promiscuous = on },
        VirtioNet.CtrlRxAllMulti => this with { AllMulticast = on },
        VirtioNet.CtrlRxAllUni => this with { AllUnicast = on },
        VirtioNet.CtrlRxNoMulti => this with { NoMulticast = on },
        VirtioNet.CtrlRxNoUni => this with { NoUnicast = on },
        _ => this with { NoBroadcast = on },
    };
}

/// <summary>A member's port counters (<see cref="PortCounters"/>); drops are indexed by <see cref="DropReason"/>.</summary>
public sealed record MemberCounters(long TxPackets, long TxBytes, long RxPackets, long RxBytes, long MacsNotLearned, ImmutableArray<long> Drops)
{
    /// <summary>Drop reasons carried, in <see cref="DropReason"/> order (the enum only grows at its end).</summary>
    public static readonly int DropReasons = Enum.GetValues<DropReason>().Length;

    public static readonly MemberCounters Zero = new(0, 0, 0, 0, 0, ImmutableArray.CreateRange(new long[DropReasons]));

    /// <summary>Bytes of the NET_COUNTERS part: five le64 counters, then one le64 per drop reason.</summary>
    public static int PartLength => 8 * (5 + DropReasons);

    public bool Equals(MemberCounters? other) =>
        other is not null && TxPackets == other.TxPackets && TxBytes == other.TxBytes && RxPackets == other.RxPackets &&
        RxBytes == other.RxBytes && MacsNotLearned == other.MacsNotLearned && Drops.SequenceEqual(other.Drops);

    public override int GetHashCode() => HashCode.Combine(TxPackets, TxBytes, RxPackets, RxBytes, MacsNotLearned);
}

/// <summary>
/// What a state must fit: the destination device's shape. A state captured from a device of
/// another shape (queue count, features, ring sizes) is refused before anything changes.
/// </summary>
public readonly record struct NetMemberShape(ulong DeviceFeatures, int QueueCount, int QueuePairs, int MaxQueueSize, int MaxMsixVectors)
{
    public static NetMemberShape Of(NetDevice device, int maxMsixVectors) =>
        new(device.Features, device.QueueCount, device.Options.QueuePairs, device.MaxQueueSize, maxMsixVectors);
}

/// <summary>Why a device state was refused (while reading parts, capturing or restoring).</summary>
public enum DeviceStateErrorKind
{
    /// <summary>The stream ends inside a header or a value.</summary>
    Truncated,
    /// <summary>A part type this device does not know.</summary>
    UnknownPart,
    /// <summary>A part comes before one that the mandated order puts first.</summary>
    OutOfOrder,
    /// <summary>A part (type and selector) appears twice.</summary>
    Duplicate,
    /// <summary>A required part is absent.</summary>
    Missing,
    /// <summary>A part's length differs from the device's length for it.</summary>
    WrongLength,
    /// <summary>Flags, reserved bytes or a selector that the part does not allow.</summary>
    BadHeader,
    /// <summary>A value out of range (reserved bits, sizes, addresses, MACs, vector numbers).</summary>
    InvalidValue,
    /// <summary>The state is for a device of another shape (queue count, queue pairs).</summary>
    ShapeMismatch,
    /// <summary>DEV_FEATURES differs from the device's own, or the driver's are not a subset of them.</summary>
    FeatureMismatch,
    /// <summary>Capture found buffers taken but not written back (the member is not quiescent).</summary>
    InFlight,
    /// <summary>Restore found a ring still running: state is applied only with the rings stopped.</summary>
    RingsRunning,
    /// <summary>The MSI-X pool cannot cover the vectors the state assigns.</summary>
    NoResource,
}

/// <summary>A refused device state: the kind to match on, and the detail for the log.</summary>
public readonly record struct DeviceStateError(DeviceStateErrorKind Kind, string Detail)
{
    public override string ToString() => $"{Kind}: {Detail}";
}
