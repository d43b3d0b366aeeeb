using System.Buffers;
using System.Buffers.Binary;
using Nerdbank.Streams;
using VhostUserVirtio.Devices.Net;

namespace VhostUserVirtio.Group.Migration;

/// <summary>
/// Encodes a <see cref="NetMemberState"/> as a device parts stream: struct virtio_dev_part records
/// (16-byte header, then the value), concatenated without padding, in the order VIRTIO 1.4 mandates
/// (virtio-admin.md §6.3) and docs/owner-binding.md "Device parts" lists. Every part is always
/// present (the MAC part only when the device has a MAC), so a stream is the member's whole state.
/// </summary>
public static class DevicePartsWriter
{
    /// <summary>Largest MAC_TABLE_SET table (entries per table), as the device accepts it.</summary>
    public const int MaxTableEntries = 64;

    /// <summary>Builds the stream in pooled segments; the caller disposes the sequence.</summary>
    public static Sequence<byte> Build(NetMemberState state)
    {
        var sequence = new Sequence<byte>(ArrayPool<byte>.Shared);
        Write(state, sequence);
        return sequence;
    }

    /// <summary>Appends the stream to <paramref name="output"/>.</summary>
    public static void Write(NetMemberState state, IBufferWriter<byte> output)
    {
        var v = Part(output, DevicePartType.DevFeatures, DeviceParts.FlagOptional, 0, 8);
        BinaryPrimitives.WriteUInt64LittleEndian(v, state.DeviceFeatures);
        output.Advance(DeviceParts.HeaderSize + 8);

        v = Part(output, DevicePartType.DrvFeatures, 0, 0, 8);
        BinaryPrimitives.WriteUInt64LittleEndian(v, state.DriverFeatures);
        output.Advance(DeviceParts.HeaderSize + 8);

        WriteU16(output, DevicePartType.PciCommonCfg, DevicePartHeader.OffsetSelector(DeviceParts.CommonConfigMsixVector), state.ConfigVector);
        WriteU16(output, DevicePartType.PciCommonCfg, DevicePartHeader.OffsetSelector(DeviceParts.CommonNumQueues), (ushort)state.Queues.Length);
        WriteU8(output, DevicePartType.DeviceStatus, 0, state.Status);

        for (int i = 0; i < state.Queues.Length; i++)
        {
            var q = state.Queues[i];
            v = Part(output, DevicePartType.VqCfg, 0, DevicePartHeader.IndexSelector((ushort)i), DeviceParts.VqCfgSize);
            BinaryPrimitives.WriteUInt16LittleEndian(v, q.Size);
            BinaryPrimitives.WriteUInt16LittleEndian(v[2..], q.Vector);
            BinaryPrimitives.WriteUInt16LittleEndian(v[4..], q.Enabled ? (ushort)1 : (ushort)0);
            BinaryPrimitives.WriteUInt16LittleEndian(v[6..], 0);
            BinaryPrimitives.WriteUInt64LittleEndian(v[8..], q.Descriptors);
            BinaryPrimitives.WriteUInt64LittleEndian(v[16..], q.Driver);
            BinaryPrimitives.WriteUInt64LittleEndian(v[24..], q.Device);
            output.Advance(DeviceParts.HeaderSize + DeviceParts.VqCfgSize);
        }
        for (int i = 0; i < state.Queues.Length; i++)
        {
            v = Part(output, DevicePartType.VqNotifyCfg, 0, DevicePartHeader.IndexSelector((ushort)i), DeviceParts.VqNotifySize);
            WriteNotify(v, (ushort)i);
            output.Advance(DeviceParts.HeaderSize + DeviceParts.VqNotifySize);
        }

        // Net parts, by (class, command): RX modes, MAC table, MAC address, queue pairs.
        for (byte command = 0; command < ReceiveModes.Count; command++)
            WriteU8(output, DevicePartType.NetCvqCfg, DevicePartHeader.ControlSelector(VirtioNet.CtrlRx, command), state.Modes.Get(command) ? (byte)1 : (byte)0);

        int tableLength = 8 + 6 * (state.UnicastTable.Length + state.MulticastTable.Length);
        v = Part(output, DevicePartType.NetCvqCfg, 0, DevicePartHeader.ControlSelector(VirtioNet.CtrlMac, VirtioNet.CtrlMacTableSet), tableLength);
        v = WriteTable(v, state.UnicastTable.AsSpan());
        WriteTable(v, state.MulticastTable.AsSpan());
        output.Advance(DeviceParts.HeaderSize + tableLength);

        if (state.Mac is { } mac)
        {
            v = Part(output, DevicePartType.NetCvqCfg, 0, DevicePartHeader.ControlSelector(VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet), 6);
            mac.Write(v);
            output.Advance(DeviceParts.HeaderSize + 6);
        }
        WriteU16(output, DevicePartType.NetCvqCfg, DevicePartHeader.ControlSelector(VirtioNet.CtrlMq, VirtioNet.CtrlMqVqPairsSet), state.ActivePairs);

        WriteU8(output, DevicePartType.NetLink, 0, state.LinkUp ? (byte)1 : (byte)0);
        WriteU8(output, DevicePartType.NetTrust, 0, state.Trusted ? (byte)1 : (byte)0);
        v = Part(output, DevicePartType.NetMsixVectors, 0, 0, 8);
        BinaryPrimitives.WriteUInt64LittleEndian(v, state.MsixVectors);
        output.Advance(DeviceParts.HeaderSize + 8);

        var c = state.Counters;
        int countersLength = MemberCounters.PartLength;
        v = Part(output, DevicePartType.NetCounters, DeviceParts.FlagOptional, 0, countersLength);
        BinaryPrimitives.WriteInt64LittleEndian(v, c.TxPackets);
        BinaryPrimitives.WriteInt64LittleEndian(v[8..], c.TxBytes);
        BinaryPrimitives.WriteInt64LittleEndian(v[16..], c.RxPackets);
        BinaryPrimitives.WriteInt64LittleEndian(v[24..], c.RxBytes);
        BinaryPrimitives.WriteInt64LittleEndian(v[32..], c.MacsNotLearned);
        for (int i = 0; i < MemberCounters.DropReasons; i++)
            BinaryPrimitives.WriteInt64LittleEndian(v[(40 + 8 * i)..], c.Drops[i]);
        output.Advance(DeviceParts.HeaderSize + countersLength);
    }

    /// <summary>
    /// The largest stream a device of <paramref name="shape"/> can produce (full MAC tables): the
    /// stable upper bound DEV_PARTS_METADATA_GET SIZE and DEV_CTX_SIZE_GET report.
    /// </summary>
    public static int MaxLength(NetMemberShape shape)
    {
        const int h = DeviceParts.HeaderSize;
        int common = (h + 8) * 2 + (h + 2) * 2 + (h + 1) + shape.QueueCount * (2 * h + DeviceParts.VqCfgSize + DeviceParts.VqNotifySize);
        int net = ReceiveModes.Count * (h + 1) + h + 8 + 6 * 2 * MaxTableEntries + (h + 6) + (h + 2);
        int project = (h + 1) * 2 + (h + 8) + h + MemberCounters.PartLength;
        return common + net + project;
    }

    /// <summary>struct virtio_dev_part_vq_notify_data of queue <paramref name="index"/>: its doorbell is its own kick descriptor.</summary>
    internal static void WriteNotify(Span<byte> v, ushort index)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(v, index);      // queue_notify_off
        BinaryPrimitives.WriteUInt16LittleEndian(v[2..], index); // queue_notif_config_data (the vq number)
        v[4..8].Clear();
    }

    /// <summary>Writes the header and returns the span the value goes into (the caller advances header + value).</summary>
    private static Span<byte> Part(IBufferWriter<byte> output, ushort type, byte flags, ulong selector, int length)
    {
        var span = output.GetSpan(DeviceParts.HeaderSize + length);
        new DevicePartHeader(type, flags, selector, (uint)length).Write(span);
        return span.Slice(DeviceParts.HeaderSize, length);
    }

    private static void WriteU8(IBufferWriter<byte> output, ushort type, ulong selector, byte value)
    {
        Part(output, type, 0, selector, 1)[0] = value;
        output.Advance(DeviceParts.HeaderSize + 1);
    }

    private static void WriteU16(IBufferWriter<byte> output, ushort type, ulong selector, ushort value)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(Part(output, type, 0, selector, 2), value);
        output.Advance(DeviceParts.HeaderSize + 2);
    }

    /// <summary>{le32 entries; u8 macs[entries][6]}; returns the rest of the span.</summary>
    private static Span<byte> WriteTable(Span<byte> v, ReadOnlySpan<Devices.Switch.Mac> macs)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(v, (uint)macs.Length);
        for (int i = 0; i < macs.Length; i++)
            macs[i].Write(v[(4 + 6 * i)..]);
        return v[(4 + 6 * macs.Length)..];
    }
}
