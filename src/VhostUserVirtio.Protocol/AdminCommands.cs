using VhostUserVirtio.Protocol;
namespace VhostUserVirtio.Protocol;

/// <summary>Admin command opcodes (VIRTIO 1.4 "Administration Commands", plus this project's seed block).</summary>
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
