namespace VhostUserVirtio.Protocol;

/// <summary>
/// The owner information block the owner (PF) publishes in its config space (docs/owner-binding.md
/// "Owner information"): eight le16 fields telling the owner driver where its admin and transport
/// queues are and how many VFs and managed devices there may be. Offsets are within the block.
/// </summary>
public static class OwnerInformation
{
    /// <summary>Where the block starts in the owner's config space, past the virtio-net config.</summary>
    public const int Offset = 0xC0;
    public const int Size = 32;

    public const int AdminQueueIndex = 0x0, AdminQueueNum = 0x2, TvqIndex = 0x4, TvqNum = 0x6;
    public const int TotalVfs = 0x8;
    /// <summary>The only writable field: writing it is SR-IOV VF Enable (0 → N) or Disable (N → 0).</summary>
    public const int NumVfs = 0xA;
    public const int MaxVdevs = 0xC, BindingVersion = 0xE;
}

/// <summary>MEMBER_RESOURCE (0x40) data: {u8 operation; u8 reserved; le16 resource; u8 reserved[4]; le64 value}.</summary>
public static class MemberResourceData
{
    public const byte Assign = 1, Query = 2;
}

/// <summary>
/// MEMBER_SOCKET (0x43) data: {u8 operation; u8 reserved[7]; path (TAKE_OVER)}; QUERY's result starts
/// with u8 flags.
/// </summary>
public static class MemberSocketData
{
    public const byte Query = 0, TakeOver = 1, Release = 2;
    public const byte Listening = 1, Connected = 2, Stopped = 4;
}

/// <summary>
/// NET_MEMBER_CTRL (0x42) data: {u8 class; u8 command; u8 reserved[6]; command data}. The classes are
/// virtio-net's control classes (VIRTIO 5.1.6.5) plus these owner-only ones, which a member's own
/// control queue never accepts.
/// </summary>
public static class NetMemberControl
{
    /// <summary>Data offset of the command data.</summary>
    public const int HeaderSize = 8;
    /// <summary>Command 0, u8 trusted (as SR-IOV's VF trust).</summary>
    public const byte TrustClass = 0x80;
    /// <summary>Command 0, u8 link up (this project).</summary>
    public const byte LinkClass = 0x81;
}
