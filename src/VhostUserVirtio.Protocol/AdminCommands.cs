namespace VhostUserVirtio.Protocol;

/// <summary>Admin command opcodes (VIRTIO 1.4 "Administration Commands", plus this project's block at 0x40).</summary>
public enum AdminOpcode : ushort
{
    ListQuery = 0x0,
    ListUse = 0x1,
    LegacyCommonCfgWrite = 0x2,
    LegacyCommonCfgRead = 0x3,
    LegacyDevCfgWrite = 0x4,
    LegacyDevCfgRead = 0x5,
    LegacyNotifyInfo = 0x6,
    CapIdListQuery = 0x7,
    DeviceCapGet = 0x8,
    DriverCapSet = 0x9,
    ResourceObjCreate = 0xa,
    ResourceObjModify = 0xb,
    ResourceObjQuery = 0xc,
    ResourceObjDestroy = 0xd,
    DevPartsMetadataGet = 0xe,
    DevPartsGet = 0xf,
    DevPartsSet = 0x10,
    DevModeSet = 0x11,
    // Seed extensions (docs/owner-binding.md).
    MemberResource = 0x40,
    MemberResourceAttrs = 0x41,
    NetMemberCtrl = 0x42,
    MemberSocket = 0x43,
}

/// <summary>Group types (group_type).</summary>
public enum AdminGroupType : ushort
{
    Self = 0x0,
    SrIov = 0x1,
}

/// <summary>Admin command status codes (equal to Linux errno numbers).</summary>
public enum AdminStatus : ushort
{
    Ok = 0,
    Enxio = 6,
    Eagain = 11,
    Enomem = 12,
    Ebusy = 16,
    Eexist = 17,
    Einval = 22,
    Enospc = 28,
}

/// <summary>Status qualifiers.</summary>
public enum AdminQualifier : ushort
{
    Ok = 0x0,
    InvalidCommand = 0x1,
    InvalidOpcode = 0x2,
    InvalidField = 0x3,
    InvalidGroup = 0x4,
    InvalidMember = 0x5,
    NoResource = 0x6,
    TryAgain = 0x7,
}

/// <summary>Sizes of the command container (struct virtio_admin_cmd).</summary>
public static class AdminLayout
{
    /// <summary>opcode, group_type, reserved[12], group_member_id.</summary>
    public const int HeaderSize = 24;
    /// <summary>status, status_qualifier, reserved[4].</summary>
    public const int StatusSize = 8;
    /// <summary>Largest command data accepted; more is ignored (the spec's tolerance rule).</summary>
    public const int MaxData = 4096;
    /// <summary>Largest result produced.</summary>
    public const int MaxResult = 4096;
}

/// <summary>Opcodes of the seed profile (the device migration proposal's "Device Migration" group administration commands).</summary>
public static class SeedOpcode
{
    public const ushort DevModeGet = 0x7;
    public const ushort DevModeSet = 0x8;
    public const ushort DevCtxSizeGet = 0x9;
    public const ushort DevCtxRead = 0xa;
    public const ushort DevCtxWrite = 0xb;
    public const ushort DevCtxFieldsQuery = 0xc;
    public const ushort DevCtxDiscard = 0xd;

    public static bool Contains(ushort opcode) => opcode is >= DevModeGet and <= DevCtxDiscard;
}

/// <summary>The member modes of the device migration proposal: Active, Stop (the 1.4 "stopped"), Freeze (stopped, and its state does not change).</summary>
public enum SeedMode : byte
{
    Active = 0,
    Stop = 1,
    Freeze = 2,
}

/// <summary>
/// NET_MEMBER_CTRL's optional result (le64, docs/owner-binding.md): whether the change can reach the
/// member's driver. A driver that supplies no result room gets none, as before.
/// </summary>
[Flags]
public enum NetMemberReach : ulong
{
    None = 0,
    /// <summary>A front end is connected to the member (or its legacy interface is in use).</summary>
    DriverAttached = 1,
    /// <summary>
    /// The member's driver reads its config space through this device: its front end negotiated
    /// VHOST_USER_PROTOCOL_F_CONFIG, or it is driven through the legacy interface. Without it (QEMU's
    /// vhost-user-net never negotiates CONFIG) a new MAC or link state is not what the driver sees.
    /// </summary>
    ConfigVisible = 2,
}
