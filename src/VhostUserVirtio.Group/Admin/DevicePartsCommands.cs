using System.Buffers;
using System.Buffers.Binary;
using VhostUserVirtio.Group.Migration;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Group.Admin;

/// <summary>
/// The device parts commands of VIRTIO 1.4 (0xe–0x11, virtio-admin.md §4.5) for the SR-IOV members,
/// as Linux's virtio-vfio-pci sends them (§9.4): METADATA_GET (size, count, list) and GET (all or
/// selected) through a GET object, SET through a SET object while the member is stopped, and
/// DEV_MODE_SET to stop and resume it. The stream is the member's state as device parts
/// (<see cref="DevicePartsWriter"/>, docs/owner-binding.md "Device parts"). A refused command changes
/// nothing. Runs on the group's worker, the thread of the members' rings.
/// </summary>
internal sealed class DevicePartsCommands(IAdminGroupState group, DevicePartsObjects objects)
{
    private const byte MetadataSize = 0, MetadataCount = 1, MetadataList = 2;
    private const byte GetSelected = 0, GetAll = 1;

    /// <summary>DEV_PARTS_METADATA_GET: data {hdr; u8 type; u8 reserved[7]}.</summary>
    public AdminOutcome MetadataGet(ulong member, ReadOnlySpan<byte> data, Span<byte> result, int room)
    {
        if (Object(member, data, DevicePartsObjects.GetObject) is { } refused)
            return refused;
        if (data.Length < 16 || data[9..16].ContainsAnyExcept((byte)0))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        var m = group.MemberOf(member)!;
        switch (data[8])
        {
            case MetadataSize:
                if (room < 8)
                    return new AdminOutcome(AdminStatus.Enomem, AdminQualifier.InvalidField);
                result[..8].Clear();
                BinaryPrimitives.WriteUInt32LittleEndian(result, (uint)DevicePartsWriter.MaxLength(Shape(m)));
                return AdminOutcome.Ok(8);
            case MetadataCount:
            case MetadataList:
                if (Capture(m, out var stream) is { } failed)
                    return failed;
                var headers = Headers(stream);
                int needed = 8 + (data[8] == MetadataList ? DeviceParts.HeaderSize * headers.Count : 0);
                if (room < needed)
                    return new AdminOutcome(AdminStatus.Enomem, AdminQualifier.InvalidField);
                result[..8].Clear();
                BinaryPrimitives.WriteUInt32LittleEndian(result, (uint)headers.Count);
                if (data[8] == MetadataList)
                    for (int i = 0; i < headers.Count; i++)
                        headers[i].Write(result[(8 + DeviceParts.HeaderSize * i)..]);
                return AdminOutcome.Ok(needed);
            default:
                return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        }
    }

    /// <summary>
    /// DEV_PARTS_GET: data {hdr; u8 type; u8 reserved[7]; part headers[] (SELECTED)}. Works while the
    /// member runs and while it is stopped, as often as asked. A result room too small for the parts
    /// fails with ENOMEM rather than returning a truncated, useless stream.
    /// </summary>
    public AdminOutcome Get(ulong member, ReadOnlySpan<byte> data, Span<byte> result, int room)
    {
        if (Object(member, data, DevicePartsObjects.GetObject) is { } refused)
            return refused;
        if (data.Length < 16 || data[9..16].ContainsAnyExcept((byte)0) || data[8] > GetAll ||
            (data[8] == GetAll && data.Length > 16) || (data.Length - 16) % DeviceParts.HeaderSize != 0)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (Capture(group.MemberOf(member)!, out var stream) is { } failed)
            return failed;
        var wanted = data[16..];
        int written = 0;
        var reader = new SequenceReader<byte>(stream);
        Span<byte> header = stackalloc byte[DeviceParts.HeaderSize];
        while (reader.TryCopyTo(header))
        {
            var h = DevicePartHeader.Read(header, out _);
            int length = DeviceParts.HeaderSize + (int)h.Length;
            if (data[8] == GetAll || Selected(wanted, h))
            {
                if (written + length > room)
                    return new AdminOutcome(AdminStatus.Enomem, AdminQualifier.InvalidField);
                reader.TryCopyTo(result.Slice(written, length));
                written += length;
            }
            reader.Advance(length);
        }
        return AdminOutcome.Ok(written);
    }

    /// <summary>
    /// DEV_PARTS_SET: data {hdr; parts[]} (Linux forwards the source's GET_ALL result unchanged). Only
    /// while the member is stopped (EBUSY otherwise). The whole stream is checked against this member
    /// first (lengths, order, device features, queue count); anything refused changes nothing.
    /// </summary>
    public AdminOutcome Set(ulong member, ReadOnlySpan<byte> data)
    {
        if (Object(member, data, DevicePartsObjects.SetObject) is { } refused)
            return refused;
        var m = group.MemberOf(member)!;
        if (!m.Endpoint.Backend.MemberStopped)
            return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        var stream = new ReadOnlySequence<byte>(data[8..].ToArray());
        if (NetMemberMigration.Restore(stream, m.Device, m.Endpoint.Backend.Queues, new MemberVectors(group.Msix, m.Id - 1), out _) is not null)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        group.LegacyOf(member)?.ConfigChanged();
        return AdminOutcome.Ok();
    }

    /// <summary>DEV_MODE_SET: data {u8 flags}, bit 0 stops the member, clear resumes it. Either is idempotent.</summary>
    public AdminOutcome ModeSet(ulong member, ReadOnlySpan<byte> data)
    {
        byte flags = data.IsEmpty ? (byte)0 : data[0];
        if ((flags & ~1) != 0)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (group.MemberOf(member) is not { } m)
            return AdminOutcome.Invalid(AdminQualifier.InvalidMember);
        m.Endpoint.Backend.SetMemberStopped((flags & 1) != 0);
        return AdminOutcome.Ok();
    }

    /// <summary>The object named in the command's header exists, belongs to this member and is of this kind.</summary>
    private AdminOutcome? Object(ulong member, ReadOnlySpan<byte> data, byte kind)
    {
        if (!DevicePartsObjects.TryReadHeader(data, out ushort type, out uint id) || type != DevicePartsObjects.DevPartsType)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (!objects.TryGet(id, out ulong owner, out byte actual))
            return new AdminOutcome(AdminStatus.Enxio, AdminQualifier.InvalidField);
        if (owner != member || actual != kind)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        return group.MemberOf(member) is null ? AdminOutcome.Invalid(AdminQualifier.InvalidMember) : null;
    }

    private NetMemberShape Shape(GroupMember m) => NetMemberShape.Of(m.Device, group.Msix.PerVfMax);

    private AdminOutcome? Capture(GroupMember m, out ReadOnlySequence<byte> stream)
    {
        stream = default;
        if (NetMemberMigration.CaptureParts(m, group.Msix, out var parts) is not null)
            return new AdminOutcome(AdminStatus.Eagain, AdminQualifier.TryAgain);
        stream = new ReadOnlySequence<byte>(parts!);
        return null;
    }

    private static List<DevicePartHeader> Headers(ReadOnlySequence<byte> stream)
    {
        var headers = new List<DevicePartHeader>();
        var reader = new SequenceReader<byte>(stream);
        Span<byte> header = stackalloc byte[DeviceParts.HeaderSize];
        while (reader.TryCopyTo(header))
        {
            var h = DevicePartHeader.Read(header, out _);
            headers.Add(h);
            reader.Advance(DeviceParts.HeaderSize + h.Length);
        }
        return headers;
    }

    /// <summary>Whether a SELECTED list names this part (type and selector; its length field is ignored).</summary>
    private static bool Selected(ReadOnlySpan<byte> wanted, DevicePartHeader part)
    {
        for (int i = 0; i + DeviceParts.HeaderSize <= wanted.Length; i += DeviceParts.HeaderSize)
        {
            var w = DevicePartHeader.Read(wanted[i..], out _);
            if (w.Type == part.Type && w.Selector == part.Selector)
                return true;
        }
        return false;
    }
}
