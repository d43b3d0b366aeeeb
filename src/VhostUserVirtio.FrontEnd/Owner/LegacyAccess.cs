using System.Buffers.Binary;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.FrontEnd.Owner;

/// <summary>A legacy register access the device refused.</summary>
public sealed class LegacyAccessException(string message, AdminReply reply) : FrontEndException(message)
{
    public AdminReply Reply { get; } = reply;
}

/// <summary>
/// One VF's legacy register file through the owner's admin queue (LEGACY_COMMON_CFG_*, LEGACY_DEV_CFG_*,
/// LEGACY_NOTIFY_INFO), as Linux's virtio-vfio-pci issues them: one command per access, any width,
/// little-endian. The raw methods return the reply; the value methods throw when the device refuses.
/// </summary>
public sealed class LegacyAccess(AdminQueueClient admin, ulong vf)
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov;

    public ulong Vf { get; } = vf;

    public AdminReply ReadCommonRaw(int offset, int length) => Read(AdminOpcode.LegacyCommonCfgRead, offset, length);
    public AdminReply ReadDeviceRaw(int offset, int length) => Read(AdminOpcode.LegacyDevCfgRead, offset, length);
    public AdminReply WriteCommonRaw(int offset, ReadOnlySpan<byte> data) => Write(AdminOpcode.LegacyCommonCfgWrite, offset, data);
    public AdminReply WriteDeviceRaw(int offset, ReadOnlySpan<byte> data) => Write(AdminOpcode.LegacyDevCfgWrite, offset, data);

    /// <summary>Reads a 1, 2 or 4-byte common register (little-endian).</summary>
    public uint ReadCommon(int offset, int width) => Value(Check(ReadCommonRaw(offset, width), "read", offset, width), width);

    /// <summary>Writes a 1, 2 or 4-byte common register.</summary>
    public void WriteCommon(int offset, int width, uint value) =>
        Check(WriteCommonRaw(offset, Bytes(value, width)), "write", offset, width);

    public byte[] ReadDevice(int offset, int length) => Check(ReadDeviceRaw(offset, length), "device config read", offset, length).Result;

    public void WriteDevice(int offset, ReadOnlySpan<byte> data) => Check(WriteDeviceRaw(offset, data), "device config write", offset, data.Length);

    /// <summary>LEGACY_NOTIFY_INFO: the (flags, bar, offset) entries before the end marker.</summary>
    public IReadOnlyList<(byte Flags, byte Bar, ulong Offset)> NotifyInfo()
    {
        var r = admin.Execute((ushort)AdminOpcode.LegacyNotifyInfo, SrIov, Vf, default, 64);
        Check(r, "notify info", 0, 64);
        var entries = new List<(byte, byte, ulong)>();
        for (int i = 0; i + 16 <= r.Result.Length && r.Result[i] != 0; i += 16)
            entries.Add((r.Result[i], r.Result[i + 1], BinaryPrimitives.ReadUInt64LittleEndian(r.Result.AsSpan(i + 8))));
        return entries;
    }

    private AdminReply Read(AdminOpcode opcode, int offset, int length) =>
        admin.Execute((ushort)opcode, SrIov, Vf, [(byte)offset], length);

    private AdminReply Write(AdminOpcode opcode, int offset, ReadOnlySpan<byte> data)
    {
        var payload = new byte[8 + data.Length];
        payload[0] = (byte)offset;
        data.CopyTo(payload.AsSpan(8));
        return admin.Execute((ushort)opcode, SrIov, Vf, payload, 0);
    }

    private AdminReply Check(AdminReply r, string what, int offset, int length) => r.Ok ? r :
        throw new LegacyAccessException($"VF {Vf}: legacy {what} of {length} byte(s) at {offset} failed: {r.Describe()}", r);

    private static uint Value(AdminReply r, int width)
    {
        Span<byte> b = stackalloc byte[4];
        b.Clear();
        r.Result.AsSpan(0, Math.Min(width, r.Result.Length)).CopyTo(b);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    private static byte[] Bytes(uint value, int width)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        return b[..width];
    }
}
