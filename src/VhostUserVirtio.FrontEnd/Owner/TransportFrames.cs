using System.Buffers.Binary;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.FrontEnd.Owner;

/// <summary>
/// What came back for one transport-queue command: the ack, and for an error the status and
/// qualifier that start its command-in-data; <see cref="Result"/> is the command-in-data that
/// follows (all of it on success, what follows status and qualifier on error).
/// </summary>
public sealed record TransportReply(uint Ack, ushort Status, ushort Qualifier, byte[] Result, uint UsedLength)
{
    /// <summary>The device wrote at least the ack, and it is 0.</summary>
    public bool Ok => Ack == 0 && UsedLength >= TransportFrames.AckSize;

    /// <summary>Status and qualifier by name, as a person wants to read them.</summary>
    public string Describe() => Ok
        ? "OK"
        : UsedLength < TransportFrames.AckSize
            ? $"no ack written (used length {UsedLength})"
            : $"{Name<AdminStatus>(Status)}/{Name<AdminQualifier>(Qualifier)} (ack {Ack}, status {Status}, qualifier {Qualifier})";

    private static string Name<T>(ushort value) where T : struct, Enum =>
        Enum.IsDefined(typeof(T), value) ? Enum.GetName(typeof(T), value)!.ToUpperInvariant() : "UNKNOWN";
}

/// <summary>A transport-queue command the device refused (ack non-zero); the reply says why.</summary>
public sealed class TransportCommandException(TransportOpcode opcode, ulong deviceId, TransportReply reply)
    : FrontEndException($"{opcode} on device {deviceId} failed: {reply.Describe()}")
{
    public TransportOpcode Opcode { get; } = opcode;
    public ulong DeviceId { get; } = deviceId;
    public TransportReply Reply { get; } = reply;
    public AdminStatus Status => (AdminStatus)Reply.Status;
    public AdminQualifier Qualifier => (AdminQualifier)Reply.Qualifier;
}

public sealed record VdevInfo(uint VirtioDeviceId, ushort NumQueues, ushort MaxQueueSize, uint ConfigSize, ushort MaxVectors);
public sealed record VqInfo(ushort MaxSize, ushort NotifyOff, ushort NotifConfigData);
/// <summary>virtio_dev_part_vq_cfg: what VQ_GET reports for one queue.</summary>
public sealed record VqConfig(ushort QueueSize, ushort Vector, ushort Enabled, ulong Desc, ulong Driver, ulong Device);
public sealed record MsiVector(ulong Address, uint Data, bool Masked, bool Pending);
public sealed record NotifyInfo(byte Bar, uint NotifyOffMultiplier, ulong BaseOffset);

/// <summary>
/// The transport queue's byte layouts as pure functions: the frame header, each command's
/// command-out-data and the decoding of each command-in-data (docs/owner-binding.md, virtio-admin
/// section 7.1 layouts). Decoders refuse results shorter than their layout.
/// </summary>
public static class TransportFrames
{
    public const int HeaderSize = TransportCommand.HeaderSize;
    public const int AckSize = TransportCommand.AckSize;
    /// <summary>An error's command-in-data: le16 status; le16 qualifier.</summary>
    public const int ErrorSize = 4;

    /// <summary>Device-readable header: le64 device_id; le16 class; le16 command.</summary>
    public static byte[] Header(ulong deviceId, ushort cls, ushort command)
    {
        var h = new byte[HeaderSize];
        BinaryPrimitives.WriteUInt64LittleEndian(h, deviceId);
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(8), cls);
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(10), command);
        return h;
    }

    public static ushort Class(TransportOpcode op) => (ushort)((ushort)op >> 8);
    public static ushort Command(TransportOpcode op) => (ushort)((ushort)op & 0xff);

    /// <summary>
    /// Reads the device-writable part: le32 ack, then command-in-data, of which only the bytes the
    /// used length covers count. An error's status and qualifier read 0xffff when the device did not
    /// write them.
    /// </summary>
    public static TransportReply ParseReply(ReadOnlySpan<byte> written, uint usedLength)
    {
        int valid = (int)Math.Min(usedLength, (uint)written.Length);
        uint ack = valid >= AckSize ? BinaryPrimitives.ReadUInt32LittleEndian(written) : uint.MaxValue;
        var inData = valid > AckSize ? written[AckSize..valid] : [];
        if (ack == 0)
            return new TransportReply(0, 0, 0, inData.ToArray(), usedLength);
        ushort status = inData.Length >= 2 ? BinaryPrimitives.ReadUInt16LittleEndian(inData) : (ushort)0xffff;
        ushort qualifier = inData.Length >= 4 ? BinaryPrimitives.ReadUInt16LittleEndian(inData[2..]) : (ushort)0xffff;
        return new TransportReply(ack, status, qualifier, inData.Length > ErrorSize ? inData[ErrorSize..].ToArray() : [], usedLength);
    }

    // Command-out-data encoders.

    public static byte[] DevCreate(uint virtioDeviceId, uint flags = 0) => Le32Pair(virtioDeviceId, flags);

    public static byte[] Features(UInt128 features)
    {
        var b = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(b, (ulong)features);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), (ulong)(features >> 64));
        return b;
    }

    public static byte[] Status(byte status) => [status, 0, 0, 0, 0, 0, 0, 0];

    public static byte[] CfgRead(uint offset, uint length) => Le32Pair(offset, length);

    public static byte[] CfgWrite(uint offset, ReadOnlySpan<byte> data)
    {
        var b = new byte[8 + data.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(b, offset);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), (uint)data.Length);
        data.CopyTo(b.AsSpan(8));
        return b;
    }

    /// <summary>le16 value; u8 reserved[6]: VQ_INFO, VQ_RESET, VQ_GET, CONFIG_VECTOR_SET, MSI_GET, NOTIFY.</summary>
    public static byte[] Index(ushort value)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        return b;
    }

    public static byte[] VqSet(ushort index, ushort size, ushort vector, ulong desc, ulong driver, ulong device)
    {
        var b = new byte[32];
        BinaryPrimitives.WriteUInt16LittleEndian(b, index);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2), size);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(4), vector);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), desc);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), driver);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(24), device);
        return b;
    }

    /// <summary>le16 index; le16 enable (1); u8 reserved[4].</summary>
    public static byte[] VqEnable(ushort index, ushort enable = 1)
    {
        var b = Index(index);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2), enable);
        return b;
    }

    /// <summary>le16 vector; le16 flags (bit 0 masked); le32 msg_data; le64 msg_addr.</summary>
    public static byte[] MsiSet(ushort vector, ulong address, uint data, bool masked)
    {
        var b = new byte[16];
        BinaryPrimitives.WriteUInt16LittleEndian(b, vector);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2), masked ? (ushort)1 : (ushort)0);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), data);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), address);
        return b;
    }

    private static byte[] Le32Pair(uint a, uint b)
    {
        var d = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(d, a);
        BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(4), b);
        return d;
    }

    // Command-in-data decoders (result sizes are what the driver posts room for).

    public const int DevCreateResultSize = 8, DevInfoResultSize = 16, FeaturesResultSize = 16, StatusResultSize = 8,
        GenerationResultSize = 4, VqInfoResultSize = 8, VqGetResultSize = 32, ConfigVectorResultSize = 8,
        MsiGetResultSize = 16, NotifyInfoResultSize = 16;

    /// <summary>le32 count; le32 reserved; le32 ids[count].</summary>
    public static uint[] ReadDevList(ReadOnlySpan<byte> r)
    {
        Need(r, 8, TransportOpcode.DevList);
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(r);
        if (count > (uint)(r.Length - 8) / 4)
            throw new FrontEndException($"DEV_LIST reports {count} devices but returned room for {(r.Length - 8) / 4}");
        var ids = new uint[count];
        for (int i = 0; i < ids.Length; i++)
            ids[i] = BinaryPrimitives.ReadUInt32LittleEndian(r[(8 + 4 * i)..]);
        return ids;
    }

    /// <summary>le32 dev_id; le32 reserved.</summary>
    public static uint ReadDevCreate(ReadOnlySpan<byte> r) =>
        BinaryPrimitives.ReadUInt32LittleEndian(Need(r, DevCreateResultSize, TransportOpcode.DevCreate));

    /// <summary>le32 virtio_device_id; le16 num_queues; le16 max_queue_size; le32 config_size; le16 max_vectors; le16 reserved.</summary>
    public static VdevInfo ReadDevInfo(ReadOnlySpan<byte> r)
    {
        Need(r, DevInfoResultSize, TransportOpcode.DevInfo);
        return new VdevInfo(BinaryPrimitives.ReadUInt32LittleEndian(r), BinaryPrimitives.ReadUInt16LittleEndian(r[4..]),
            BinaryPrimitives.ReadUInt16LittleEndian(r[6..]), BinaryPrimitives.ReadUInt32LittleEndian(r[8..]),
            BinaryPrimitives.ReadUInt16LittleEndian(r[12..]));
    }

    /// <summary>le64 features[2], bits 0–127.</summary>
    public static UInt128 ReadFeatures(ReadOnlySpan<byte> r)
    {
        Need(r, FeaturesResultSize, TransportOpcode.DevFeaturesGet);
        return new UInt128(BinaryPrimitives.ReadUInt64LittleEndian(r[8..]), BinaryPrimitives.ReadUInt64LittleEndian(r));
    }

    public static byte ReadStatus(ReadOnlySpan<byte> r) => Need(r, 1, TransportOpcode.StatusGet)[0];

    public static uint ReadGeneration(ReadOnlySpan<byte> r) =>
        BinaryPrimitives.ReadUInt32LittleEndian(Need(r, GenerationResultSize, TransportOpcode.GenerationGet));

    /// <summary>le16 max_size; le16 notify_off; le16 notif_config_data; le16 reserved.</summary>
    public static VqInfo ReadVqInfo(ReadOnlySpan<byte> r)
    {
        Need(r, VqInfoResultSize, TransportOpcode.VqInfo);
        return new VqInfo(BinaryPrimitives.ReadUInt16LittleEndian(r), BinaryPrimitives.ReadUInt16LittleEndian(r[2..]),
            BinaryPrimitives.ReadUInt16LittleEndian(r[4..]));
    }

    /// <summary>virtio_dev_part_vq_cfg: le16 queue_size; le16 vector; le16 enabled; le16 reserved; le64 desc, driver, device.</summary>
    public static VqConfig ReadVqGet(ReadOnlySpan<byte> r)
    {
        Need(r, VqGetResultSize, TransportOpcode.VqGet);
        return new VqConfig(BinaryPrimitives.ReadUInt16LittleEndian(r), BinaryPrimitives.ReadUInt16LittleEndian(r[2..]),
            BinaryPrimitives.ReadUInt16LittleEndian(r[4..]), BinaryPrimitives.ReadUInt64LittleEndian(r[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(r[16..]), BinaryPrimitives.ReadUInt64LittleEndian(r[24..]));
    }

    /// <summary>le16 assigned (0xFFFF on failure); u8 reserved[6].</summary>
    public static ushort ReadConfigVector(ReadOnlySpan<byte> r) =>
        BinaryPrimitives.ReadUInt16LittleEndian(Need(r, 2, TransportOpcode.ConfigVectorSet));

    /// <summary>le64 address; le32 data; u8 flags (bit 0 mask, bit 1 pending); u8 reserved[3].</summary>
    public static MsiVector ReadMsiGet(ReadOnlySpan<byte> r)
    {
        Need(r, MsiGetResultSize, TransportOpcode.MsiGet);
        byte flags = r[12];
        return new MsiVector(BinaryPrimitives.ReadUInt64LittleEndian(r), BinaryPrimitives.ReadUInt32LittleEndian(r[8..]),
            (flags & 1) != 0, (flags & 2) != 0);
    }

    /// <summary>u8 bar; u8 reserved[3]; le32 notify_off_multiplier; le64 base_offset.</summary>
    public static NotifyInfo ReadNotifyInfo(ReadOnlySpan<byte> r)
    {
        Need(r, NotifyInfoResultSize, TransportOpcode.NotifyInfo);
        return new NotifyInfo(r[0], BinaryPrimitives.ReadUInt32LittleEndian(r[4..]), BinaryPrimitives.ReadUInt64LittleEndian(r[8..]));
    }

    private static ReadOnlySpan<byte> Need(ReadOnlySpan<byte> r, int size, TransportOpcode op) =>
        r.Length >= size ? r : throw new FrontEndException($"{op}: the device returned {r.Length} result bytes, the layout has {size}");
}
