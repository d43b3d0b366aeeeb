using System.Buffers.Binary;

namespace VhostUserVirtio.Group.Migration;

/// <summary>
/// Device part types (VIRTIO 1.4 "Device parts", virtio-admin.md §6.2), and this project's own net
/// parts for state the specification has no part for. 0x0000–0x01FF are common parts, 0x0200–0x05FF
/// device-type specific; the project's parts sit at the top of the net range (0x05F0–0x05F3),
/// far from 0x0200 where the specification allocates.
/// </summary>
public static class DevicePartType
{
    public const ushort DevFeatures = 0x100;
    public const ushort DrvFeatures = 0x101;
    public const ushort PciCommonCfg = 0x102;
    public const ushort DeviceStatus = 0x103;
    public const ushort VqCfg = 0x104;
    public const ushort VqNotifyCfg = 0x105;
    /// <summary>VIRTIO_NET_DEV_PART_CVQ_CFG_PART: selector {u8 class; u8 command}, value = that control command's data.</summary>
    public const ushort NetCvqCfg = 0x200;

    // Project parts (net): state a virtio-net member holds that no specified part carries.
    /// <summary>u8 link up (as NET_MEMBER_CTRL class 0x81's data).</summary>
    public const ushort NetLink = 0x5F0;
    /// <summary>u8 trusted (as NET_MEMBER_CTRL class 0x80's data).</summary>
    public const ushort NetTrust = 0x5F1;
    /// <summary>le64 MSI-X vectors assigned to the member (MEMBER_RESOURCE resource 0's resource_val).</summary>
    public const ushort NetMsixVectors = 0x5F2;
    /// <summary>The member's port counters; OPTIONAL (statistics a device may ignore).</summary>
    public const ushort NetCounters = 0x5F3;

    public static string Name(ushort type) => type switch
    {
        DevFeatures => "DEV_FEATURES",
        DrvFeatures => "DRV_FEATURES",
        PciCommonCfg => "PCI_COMMON_CFG",
        DeviceStatus => "DEVICE_STATUS",
        VqCfg => "VQ_CFG",
        VqNotifyCfg => "VQ_NOTIFY_CFG",
        NetCvqCfg => "NET_CVQ_CFG",
        NetLink => "NET_LINK",
        NetTrust => "NET_TRUST",
        NetMsixVectors => "NET_MSIX_VECTORS",
        NetCounters => "NET_COUNTERS",
        _ => $"0x{type:x3}",
    };
}

/// <summary>Fixed numbers of the device parts record format (virtio-admin.md §6.1–§6.2).</summary>
public static class DeviceParts
{
    /// <summary>struct virtio_dev_part_hdr.</summary>
    public const int HeaderSize = 16;
    /// <summary>VIRTIO_DEV_PART_F_OPTIONAL (flags bit 0): the device may ignore the part.</summary>
    public const byte FlagOptional = 1;
    /// <summary>struct virtio_dev_part_vq_cfg.</summary>
    public const int VqCfgSize = 32;
    /// <summary>struct virtio_dev_part_vq_notify_data.</summary>
    public const int VqNotifySize = 8;
    /// <summary>Offsets in struct virtio_pci_common_cfg of the PCI_COMMON_CFG parts emitted (§6.3 recommendation).</summary>
    public const ushort CommonConfigMsixVector = 16;
    public const ushort CommonNumQueues = 18;
    /// <summary>VIRTIO_MSI_NO_VECTOR.</summary>
    public const ushort NoVector = 0xFFFF;
}

/// <summary>
/// struct virtio_dev_part_hdr (16 bytes, little-endian): le16 part_type; u8 flags; u8 reserved;
/// u8 selector[8] (pci_common_cfg {le32 offset; le32 reserved}, vq_index {le16 index; u8 reserved[6]},
/// or device-type raw bytes); le32 length of the value that follows.
/// </summary>
public readonly record struct DevicePartHeader(ushort Type, byte Flags, ulong Selector, uint Length)
{
    /// <summary>Selector of a PCI_COMMON_CFG part: the field's offset.</summary>
    public static ulong OffsetSelector(ushort offset) => offset;

    /// <summary>Selector of a VQ_CFG / VQ_NOTIFY_CFG part: the queue index.</summary>
    public static ulong IndexSelector(ushort index) => index;

    /// <summary>Selector of a net CVQ part: {u8 class; u8 command; u8 reserved[6]}.</summary>
    public static ulong ControlSelector(byte cls, byte command) => cls | ((ulong)command << 8);

    /// <summary>Writes the header; reserved is written as 0.</summary>
    public void Write(Span<byte> b)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(b, Type);
        b[2] = Flags;
        b[3] = 0;
        BinaryPrimitives.WriteUInt64LittleEndian(b[4..], Selector);
        BinaryPrimitives.WriteUInt32LittleEndian(b[12..], Length);
    }

    /// <summary>Reads a header; <paramref name="reserved"/> is the reserved byte, for the caller to check.</summary>
    public static DevicePartHeader Read(ReadOnlySpan<byte> b, out byte reserved)
    {
        reserved = b[3];
        return new(BinaryPrimitives.ReadUInt16LittleEndian(b), b[2],
            BinaryPrimitives.ReadUInt64LittleEndian(b[4..]), BinaryPrimitives.ReadUInt32LittleEndian(b[12..]));
    }

    public override string ToString() => $"{DevicePartType.Name(Type)} (flags 0x{Flags:x}, selector 0x{Selector:x}, length {Length})";
}
