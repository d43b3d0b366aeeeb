using VhostUserVirtio.Protocol;
namespace VhostUserVirtio.Protocol;

/// <summary>Who may write a legacy register field.</summary>
public enum LegacyFieldAccess { ReadOnly, ReadWrite }

/// <summary>One field of a legacy register block: where it is, how wide, and whether the driver may write it.</summary>
public readonly record struct LegacyField(int Offset, int Size, string Name, LegacyFieldAccess Access)
{
    public bool Contains(int offset, int length) => offset >= Offset && offset + length <= Offset + Size;
}

/// <summary>
/// The legacy (transitional) virtio-net register file a member presents through the legacy interface
/// admin commands (VIRTIO 1.x 4.1.4.8 "Legacy Interfaces: A Note on PCI Device Layout", and the legacy
/// net config): the common header, with the MSI-X vector registers, then the device config. Offsets
/// are as the LEGACY_*_CFG commands carry them: common ones from the header's start, device ones from
/// the device config's start.
/// </summary>
public static class LegacyLayout
{
    public const int HostFeatures = 0;
    public const int GuestFeatures = 4;
    public const int QueueAddress = 8;
    public const int QueueSize = 12;
    public const int QueueSelect = 14;
    public const int QueueNotify = 16;
    public const int DeviceStatus = 18;
    public const int IsrStatus = 19;
    public const int ConfigVector = 20;
    public const int QueueVector = 22;
    /// <summary>The common header with MSI-X enabled (device config would follow at this offset on an I/O BAR).</summary>
    public const int CommonSize = 24;

    public const ushort NoVector = 0xFFFF;
    public const byte IsrQueue = 1;
    public const byte IsrConfig = 2;
    /// <summary>Every legacy queue has this many entries; the driver cannot choose (Queue Size is read-only).</summary>
    public const int QueueEntries = 256;

    public static readonly LegacyField[] Common =
    [
        new(HostFeatures, 4, "host features", LegacyFieldAccess.ReadOnly),
        new(GuestFeatures, 4, "guest features", LegacyFieldAccess.ReadWrite),
        new(QueueAddress, 4, "queue address", LegacyFieldAccess.ReadWrite),
        new(QueueSize, 2, "queue size", LegacyFieldAccess.ReadOnly),
        new(QueueSelect, 2, "queue select", LegacyFieldAccess.ReadWrite),
        new(QueueNotify, 2, "queue notify", LegacyFieldAccess.ReadWrite),
        new(DeviceStatus, 1, "device status", LegacyFieldAccess.ReadWrite),
        new(IsrStatus, 1, "ISR status", LegacyFieldAccess.ReadOnly),
        new(ConfigVector, 2, "config MSI-X vector", LegacyFieldAccess.ReadWrite),
        new(QueueVector, 2, "queue MSI-X vector", LegacyFieldAccess.ReadWrite),
    ];

    // Legacy virtio-net device config: mac is driver-writable in legacy; status, max_virtqueue_pairs
    // and mtu are read-only. The speed/duplex/RSS fields are not offered, so the block ends at mtu.
    public const int NetMac = 0;
    public const int NetStatus = 6;
    public const int NetMaxPairs = 8;
    public const int NetMtu = 10;
    public const int NetConfigSize = 12;

    public static readonly LegacyField[] NetConfig =
    [
        new(NetMac, 6, "mac", LegacyFieldAccess.ReadWrite),
        new(NetStatus, 2, "status", LegacyFieldAccess.ReadOnly),
        new(NetMaxPairs, 2, "max_virtqueue_pairs", LegacyFieldAccess.ReadOnly),
        new(NetMtu, 2, "mtu", LegacyFieldAccess.ReadOnly),
    ];

    /// <summary>
    /// The one field an access of <paramref name="length"/> bytes at <paramref name="offset"/> lies in,
    /// or null: the legacy commands must address a single field (sub-field accesses are fine).
    /// </summary>
    public static LegacyField? FieldOf(ReadOnlySpan<LegacyField> fields, int offset, int length)
    {
        if (length <= 0)
            return null;
        foreach (var f in fields)
            if (f.Contains(offset, length))
                return f;
        return null;
    }
}
