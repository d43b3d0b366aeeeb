namespace VhostUserVirtio.Protocol;

/// <summary>vhost-user protocol feature bits (vhost-user.rst "Protocol features"), as a mask type.</summary>
[Flags]
public enum ProtocolFeatures : ulong
{
    None = 0,
    Mq = 1UL << 0,
    LogShmfd = 1UL << 1,
    Rarp = 1UL << 2,
    ReplyAck = 1UL << 3,
    NetMtu = 1UL << 4,
    BackendReq = 1UL << 5,
    CrossEndian = 1UL << 6,
    CryptoSession = 1UL << 7,
    Pagefault = 1UL << 8,
    Config = 1UL << 9,
    BackendSendFd = 1UL << 10,
    HostNotifier = 1UL << 11,
    InflightShmfd = 1UL << 12,
    ResetDevice = 1UL << 13,
    InbandNotifications = 1UL << 14,
    ConfigureMemSlots = 1UL << 15,
    Status = 1UL << 16,
    DeviceState = 1UL << 19,
}

/// <summary>
/// Virtio feature bit numbers used by this project (VIRTIO 1.x "Reserved Feature Bits" and the
/// vhost-user additions). Bit numbers, not masks: use <see cref="Mask"/> to build a mask.
/// </summary>
public static class VirtioFeature
{
    public const int NotifyOnEmpty = 24;
    public const int AnyLayout = 27;
    public const int RingIndirectDesc = 28;
    public const int RingEventIdx = 29;
    /// <summary>vhost-user's VHOST_USER_F_PROTOCOL_FEATURES, reusing the legacy UNUSED bit 30.</summary>
    public const int VhostUserProtocolFeatures = 30;
    /// <summary>VHOST_F_LOG_ALL: dirty logging for live migration.</summary>
    public const int VhostLogAll = 26;
    public const int Version1 = 32;
    public const int AccessPlatform = 33;
    public const int RingPacked = 34;
    public const int InOrder = 35;
    public const int OrderPlatform = 36;
    public const int SrIov = 37;
    public const int NotificationData = 38;
    public const int RingReset = 40;
    public const int AdminVq = 41;

    public static ulong Mask(int bit) => 1UL << bit;

    public static bool Has(ulong features, int bit) => (features & Mask(bit)) != 0;
}

/// <summary>Device status bits (VIRTIO 1.x 2.1).</summary>
[Flags]
public enum DeviceStatus : byte
{
    Reset = 0,
    Acknowledge = 1,
    Driver = 2,
    DriverOk = 4,
    FeaturesOk = 8,
    DeviceNeedsReset = 64,
    Failed = 128,
}
