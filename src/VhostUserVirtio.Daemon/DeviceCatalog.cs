using VhostUserVirtio.Group;

namespace VhostUserVirtio.Daemon;

/// <summary>What the daemon serves: one virtio-net device group (owner, VFs, switch, optional uplink).</summary>
internal static class DeviceCatalog
{
    /// <summary>The "type" of the vhost-user.json capability document and descriptor file (VHostUserBackendType).</summary>
    public const string CapabilityType = "net";

    public static DeviceGroupOptions GroupOptions(DaemonSettings s) => new()
    {
        SocketDirectory = s.SocketDirectory,
        Vfs = s.Vfs,
        QueuePairs = s.QueuePairs,
        Mtu = s.Mtu,
        Uplink = s.Uplink,
        MaxMacsPerPort = s.MaxMacsPerPort,
        TrustVfs = s.TrustVfs,
        MacBase = s.MacBase ?? DeviceGroupOptions.DefaultMacBase,
        VfConfigSpace = s.VfConfigSpace,
        AdminProfile = s.AdminProfile,
        ResourceObjectOpcodes = s.ResourceObjectOpcodes,
        MaxManagedDevices = s.MaxVdevs,
        TransportFeatureBit = s.TransportFeatureBit,
        ClientMode = s.ClientMode,
        OwnerSocketPath = s.SocketPath,
        OwnerListener = s.Fd is { } fd ? Interop.UnixSocket.AdoptListener(fd) : null,
    };

    /// <summary>One status line: per port connected or not and its counters, then the MAC table size.</summary>
    public static string Describe(DeviceGroup group)
    {
        var status = group.Status();
        return string.Join("; ", status.Ports.Select(p =>
                   $"{p.Name} {(p.Connected ? "up" : "idle")}{(p.LegacyDriven ? " legacy" : "")} tx={p.Counters.TxPackets} rx={p.Counters.RxPackets} drops={p.Counters.Drops.Values.Sum()}" +
                   (p.Counters.MacsNotLearned > 0 ? $" not-learned={p.Counters.MacsNotLearned}" : "") +
                   (p.Counters.Offloads is { Any: true } o
                       ? $" offloads passed={o.PassedThrough} csum={o.ChecksumsCompleted} segmented={o.FramesSegmented}/{o.SegmentsMade}" : "")))
               + $"; macs={status.MacTable.Count} floods={status.Floods}"
               + (status.DroppedWhileStopped > 0 ? $" dropped-while-stopped={status.DroppedWhileStopped}" : "");
    }
}
