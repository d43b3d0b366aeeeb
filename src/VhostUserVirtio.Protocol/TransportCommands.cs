namespace VhostUserVirtio.Protocol;

/// <summary>
/// Classes and commands of the transport virtqueue (docs/owner-binding.md "Transport virtqueue"):
/// the command numbers of virtio-admin.md §7.1 split into class and command (0xCCNN = class 0xCC,
/// command 0xNN), carried in the transport virtqueue proposal's virtio_transportq_ctrl framing (virtio-comment, 2023).
/// </summary>
public static class TransportCommand
{
    public const ushort DeviceClass = 1, FeatureClass = 2, StatusClass = 3, ConfigClass = 4, QueueClass = 5, MsiClass = 6, NotifyClass = 7;

    /// <summary>Class 1; DMA_WINDOW_SET (5) is the project's: a managed device's own DMA space in the owner's memory.</summary>
    public const ushort DevList = 1, DevCreate = 2, DevDestroy = 3, DevInfo = 4, DmaWindowSet = 5;
    public const ushort DevFeaturesGet = 1, DrvFeaturesSet = 2, DrvFeaturesGet = 3;
    public const ushort StatusGet = 1, StatusSet = 2, GenerationGet = 3;
    public const ushort CfgRead = 1, CfgWrite = 2;
    public const ushort VqInfo = 1, VqSet = 2, VqEnable = 3, VqReset = 4, VqGet = 5;
    public const ushort MsiSet = 1, ConfigVectorSet = 2, MsiGet = 3;
    public const ushort NotifyInfo = 1, Notify = 2;

    /// <summary>Frame sizes: device-readable header {le64 device_id; le16 class; le16 command}, device-writable {le32 ack}.</summary>
    public const int HeaderSize = 12, AckSize = 4;

    /// <summary>Largest command-out and command-in data handled (a config read, a device list).</summary>
    public const int MaxData = 4096, MaxResult = 4096;

    /// <summary>ack values (the transport virtqueue proposal).</summary>
    public const uint Ok = 0, Error = 1;

    /// <summary>The virtio device type a managed device can have: network (1).</summary>
    public const uint NetDeviceType = 1;

    /// <summary>The default project-assigned bit of VIRTIO_F_TRANSPT_VQ (owner binding; 44–49 are unallocated in VIRTIO 1.4).</summary>
    public const int DefaultFeatureBit = 47;

    public static string Name(ushort cls, ushort command) => (cls, command) switch
    {
        (1, 1) => "DEV_LIST", (1, 2) => "DEV_CREATE", (1, 3) => "DEV_DESTROY", (1, 4) => "DEV_INFO", (1, 5) => "DMA_WINDOW_SET",
        (2, 1) => "DEV_FEATURES_GET", (2, 2) => "DRV_FEATURES_SET", (2, 3) => "DRV_FEATURES_GET",
        (3, 1) => "STATUS_GET", (3, 2) => "STATUS_SET", (3, 3) => "GENERATION_GET",
        (4, 1) => "CFG_READ", (4, 2) => "CFG_WRITE",
        (5, 1) => "VQ_INFO", (5, 2) => "VQ_SET", (5, 3) => "VQ_ENABLE", (5, 4) => "VQ_RESET", (5, 5) => "VQ_GET",
        (6, 1) => "MSI_SET", (6, 2) => "CONFIG_VECTOR_SET", (6, 3) => "MSI_GET",
        (7, 1) => "NOTIFY_INFO", (7, 2) => "NOTIFY",
        _ => $"{cls}.{command}",
    };
}

/// <summary>Transport-queue commands as class.command (0xCCNN: class 0xCC, command 0xNN), docs/owner-binding.md.</summary>
public enum TransportOpcode : ushort
{
    DevList = TransportCommand.DeviceClass << 8 | TransportCommand.DevList,
    DevCreate = TransportCommand.DeviceClass << 8 | TransportCommand.DevCreate,
    DevDestroy = TransportCommand.DeviceClass << 8 | TransportCommand.DevDestroy,
    DevInfo = TransportCommand.DeviceClass << 8 | TransportCommand.DevInfo,
    DevFeaturesGet = TransportCommand.FeatureClass << 8 | TransportCommand.DevFeaturesGet,
    DrvFeaturesSet = TransportCommand.FeatureClass << 8 | TransportCommand.DrvFeaturesSet,
    DrvFeaturesGet = TransportCommand.FeatureClass << 8 | TransportCommand.DrvFeaturesGet,
    StatusGet = TransportCommand.StatusClass << 8 | TransportCommand.StatusGet,
    StatusSet = TransportCommand.StatusClass << 8 | TransportCommand.StatusSet,
    GenerationGet = TransportCommand.StatusClass << 8 | TransportCommand.GenerationGet,
    CfgRead = TransportCommand.ConfigClass << 8 | TransportCommand.CfgRead,
    CfgWrite = TransportCommand.ConfigClass << 8 | TransportCommand.CfgWrite,
    VqInfo = TransportCommand.QueueClass << 8 | TransportCommand.VqInfo,
    VqSet = TransportCommand.QueueClass << 8 | TransportCommand.VqSet,
    VqEnable = TransportCommand.QueueClass << 8 | TransportCommand.VqEnable,
    VqReset = TransportCommand.QueueClass << 8 | TransportCommand.VqReset,
    VqGet = TransportCommand.QueueClass << 8 | TransportCommand.VqGet,
    MsiSet = TransportCommand.MsiClass << 8 | TransportCommand.MsiSet,
    ConfigVectorSet = TransportCommand.MsiClass << 8 | TransportCommand.ConfigVectorSet,
    MsiGet = TransportCommand.MsiClass << 8 | TransportCommand.MsiGet,
    NotifyInfo = TransportCommand.NotifyClass << 8 | TransportCommand.NotifyInfo,
    Notify = TransportCommand.NotifyClass << 8 | TransportCommand.Notify,
}
