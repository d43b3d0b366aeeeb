using System.Buffers;
using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Nerdbank.Streams;
using VhostUserVirtio.Group.Migration;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Group.Admin;

/// <summary>Which opcodes the admin queue offers at 0x7 and above (docs/owner-binding.md "Admin command profiles").</summary>
public enum AdminProfile
{
    /// <summary>VIRTIO 1.4: capabilities 0x7–0x9 (self group), resource objects 0xa–0xd, device parts 0xe–0x11.</summary>
    Spec,
    /// <summary>The device migration proposal (virtio-comment, 2023; the "seed" profile): DEV_MODE_* and DEV_CTX_* at 0x7–0xd for the SR-IOV group; no 0xe–0x11.</summary>
    Seed,
}

/// <summary>
/// The device migration proposal's commands for the SR-IOV members (docs/owner-binding.md "Admin
/// command profiles", profile <c>seed</c>). The device context is the member's device parts stream
/// (<see cref="DevicePartsWriter"/>), the same state model as the spec profile's DEV_PARTS commands:
/// a read context is captured when reading starts and consumed as it is read; a written context is
/// collected in Freeze and applied, checked as a whole, when the member leaves Freeze. Every refused
/// command changes nothing. Runs on the group's worker, the thread of the members' rings.
/// </summary>
internal sealed class SeedMigrationCommands(IAdminGroupState group, ILogger logger)
{
    /// <summary>Per-member migration state, tied to the member object it was made for (a VF re-created by VF Enable starts afresh).</summary>
    private sealed class Context(GroupMember member)
    {
        public GroupMember Member { get; } = member;
        public bool Frozen;
        /// <summary>The context being read (null: none captured in this mode yet), how far it was read, and whether its end was reported.</summary>
        public byte[]? Read;
        public int ReadAt;
        public bool ReadEnded;
        /// <summary>The context written in Freeze so far, in pooled segments (it grows chunk by chunk).</summary>
        public readonly Sequence<byte> Written = new(ArrayPool<byte>.Shared);

        public void DropRead()
        {
            Read = null;
            ReadAt = 0;
            ReadEnded = false;
        }
    }

    private readonly Dictionary<ulong, Context> _contexts = new();

    /// <summary>Owner reset: modes and contexts are forgotten (the processor resumes every member).</summary>
    public void Reset()
    {
        foreach (var c in _contexts.Values)
            c.Written.Dispose();
        _contexts.Clear();
    }

    /// <summary>Whether member <paramref name="id"/> is in Freeze.</summary>
    public bool Frozen(ulong id) => Find(id) is { } c && ModeOf(c) == SeedMode.Freeze;

    public AdminOutcome Execute(ushort opcode, ulong member, ReadOnlySpan<byte> data, bool dataCut, Span<byte> result, int room)
    {
        if (Find(member) is not { } c)
            return AdminOutcome.Invalid(AdminQualifier.InvalidMember);
        switch (opcode)
        {
            case SeedOpcode.DevModeGet:
                result[0] = (byte)ModeOf(c);
                return AdminOutcome.Ok(1);
            case SeedOpcode.DevModeSet:
                return ModeSet(c, data);
            case SeedOpcode.DevCtxSizeGet:
                return SizeGet(c, data, result);
            case SeedOpcode.DevCtxRead:
                return Read(c, result, room);
            case SeedOpcode.DevCtxWrite:
                return Write(c, data, dataCut);
            case SeedOpcode.DevCtxFieldsQuery:
                return FieldsQuery(result);
            case SeedOpcode.DevCtxDiscard:
                c.DropRead();
                c.Written.Reset();
                return AdminOutcome.Ok();
            default:
                return AdminOutcome.Invalid(AdminQualifier.InvalidOpcode);
        }
    }

    /// <summary>
    /// DEV_MODE_SET: data {u8 mode}. Leaving Freeze applies a written context first; if it is refused
    /// the command fails and the member stays frozen with its context. Each mode change starts a new
    /// read context (the seed: a context is read once per mode). Setting the current mode succeeds.
    /// </summary>
    private AdminOutcome ModeSet(Context c, ReadOnlySpan<byte> data)
    {
        byte wanted = data.IsEmpty ? (byte)0 : data[0];
        if (wanted > (byte)SeedMode.Freeze)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        var mode = (SeedMode)wanted;
        var current = ModeOf(c);
        if (mode == current)
            return AdminOutcome.Ok();
        var m = c.Member;
        if (current == SeedMode.Freeze && c.Written.Length > 0)
        {
            var stream = c.Written.AsReadOnlySequence;
            if (NetMemberMigration.Restore(stream, m.Device, m.Endpoint.Backend.Queues, new MemberVectors(group.Msix, m.Id - 1), out _) is { } refused)
            {
                logger.LogWarning("admin: context written to {Device} refused on leaving Freeze: {Error}", m.Device.Name, refused);
                return AdminOutcome.Invalid(AdminQualifier.InvalidField);
            }
            c.Written.Reset();
            group.LegacyOf((ulong)m.Id)?.ConfigChanged();
            logger.LogInformation("admin: context written to {Device} applied", m.Device.Name);
        }
        c.Frozen = mode == SeedMode.Freeze;
        m.Endpoint.Backend.SetMemberStopped(mode != SeedMode.Active, frozen: mode == SeedMode.Freeze);
        c.DropRead();
        return AdminOutcome.Ok();
    }

    /// <summary>
    /// DEV_CTX_SIZE_GET: data {u8 freeze_mode} → le64 size. What remains of the context being read;
    /// before reading starts (or for Freeze while not frozen), the length of a context captured now,
    /// or the largest possible one if the member cannot be captured at this moment.
    /// </summary>
    private AdminOutcome SizeGet(Context c, ReadOnlySpan<byte> data, Span<byte> result)
    {
        byte freezeMode = data.IsEmpty ? (byte)0 : data[0];
        if (freezeMode > 1)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        bool current = freezeMode == 0 || ModeOf(c) == SeedMode.Freeze;
        ulong size;
        if (current && c.ReadEnded)
            size = 0;
        else if (current && c.Read != null)
            size = (ulong)(c.Read.Length - c.ReadAt);
        else
            size = (ulong)(Capture(c.Member) is { } now ? now.Length : DevicePartsWriter.MaxLength(Shape(c.Member)));
        BinaryPrimitives.WriteUInt64LittleEndian(result, size);
        return AdminOutcome.Ok(8);
    }

    /// <summary>
    /// DEV_CTX_READ → {le32 context_len; u8 data[context_len]}, as much as the result room holds. The
    /// first read in a mode captures the context; a read with nothing left returns 0 and ends the
    /// stream (later reads return 0 until the mode changes or the context is discarded). A room with
    /// no space for data while data remains fails with ENOMEM: a 0 length would end the stream.
    /// </summary>
    private AdminOutcome Read(Context c, Span<byte> result, int room)
    {
        if (!c.ReadEnded && c.Read == null)
        {
            if (Capture(c.Member) is not { } captured)
                return new AdminOutcome(AdminStatus.Eagain, AdminQualifier.TryAgain);
            c.Read = captured;
            c.ReadAt = 0;
        }
        int remaining = c.ReadEnded ? 0 : c.Read!.Length - c.ReadAt;
        if (remaining == 0)
        {
            c.Read = null;
            c.ReadEnded = true;
            BinaryPrimitives.WriteUInt32LittleEndian(result, 0);
            return AdminOutcome.Ok(4);
        }
        if (room <= 4)
            return new AdminOutcome(AdminStatus.Enomem, AdminQualifier.InvalidField);
        int n = Math.Min(remaining, room - 4);
        c.Read.AsSpan(c.ReadAt, n).CopyTo(result[4..]);
        BinaryPrimitives.WriteUInt32LittleEndian(result, (uint)n);
        c.ReadAt += n;
        return AdminOutcome.Ok(4 + n);
    }

    /// <summary>
    /// DEV_CTX_WRITE: data {u8 data[]}, appended to the context being written. Only in Freeze (EBUSY
    /// otherwise); a context growing past the largest this member can have, or data the queue had to
    /// cut, is refused (EINVAL) without appending anything.
    /// </summary>
    private AdminOutcome Write(Context c, ReadOnlySpan<byte> data, bool dataCut)
    {
        if (ModeOf(c) != SeedMode.Freeze)
            return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        if (dataCut || c.Written.Length + data.Length > DevicePartsWriter.MaxLength(Shape(c.Member)))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        c.Written.Write(data);
        return AdminOutcome.Ok();
    }

    /// <summary>
    /// DEV_CTX_FIELDS_QUERY → entries {le16 type; u8 reserved[6]; le64 length}: every part type a
    /// member's context has, with the largest value one record of that type carries on this member.
    /// </summary>
    private static AdminOutcome FieldsQuery(Span<byte> result)
    {
        const int entry = 16;
        var fields = Fields;
        for (int i = 0; i < fields.Length; i++)
        {
            var e = result.Slice(entry * i, entry);
            e.Clear();
            BinaryPrimitives.WriteUInt16LittleEndian(e, fields[i].Type);
            BinaryPrimitives.WriteUInt64LittleEndian(e[8..], (ulong)fields[i].Length);
        }
        return AdminOutcome.Ok(entry * fields.Length);
    }

    /// <summary>Part types in <see cref="DevicePartsWriter"/>'s order, with their largest value length.</summary>
    // The MAC table (two full tables) is the largest control-queue part.
    internal static readonly (ushort Type, int Length)[] Fields =
        [
            (DevicePartType.DevFeatures, 8), (DevicePartType.DrvFeatures, 8), (DevicePartType.PciCommonCfg, 2),
            (DevicePartType.DeviceStatus, 1), (DevicePartType.VqCfg, DeviceParts.VqCfgSize), (DevicePartType.VqNotifyCfg, DeviceParts.VqNotifySize),
            (DevicePartType.NetCvqCfg, 8 + 6 * 2 * DevicePartsWriter.MaxTableEntries), (DevicePartType.NetLink, 1), (DevicePartType.NetTrust, 1), (DevicePartType.NetMsixVectors, 8),
            (DevicePartType.NetCounters, MemberCounters.PartLength),
        ];

    /// <summary>The mode, from the member's rings: a member the owner has not stopped is Active whatever was set before.</summary>
    private static SeedMode ModeOf(Context c)
    {
        if (!c.Member.Endpoint.Backend.MemberStopped)
            c.Frozen = false;
        return !c.Member.Endpoint.Backend.MemberStopped ? SeedMode.Active : c.Frozen ? SeedMode.Freeze : SeedMode.Stop;
    }

    private Context? Find(ulong id)
    {
        if (group.MemberOf(id) is not { } member)
            return null;
        if (!_contexts.TryGetValue(id, out var c) || c.Member != member)
        {
            c?.Written.Dispose();
            _contexts[id] = c = new Context(member);
        }
        return c;
    }

    private NetMemberShape Shape(GroupMember m) => NetMemberShape.Of(m.Device, group.Msix.PerVfMax);

    /// <summary>The member's parts stream now, or null while it cannot be read (buffers in flight).</summary>
    private byte[]? Capture(GroupMember m)
    {
        NetMemberMigration.CaptureParts(m, group.Msix, out var parts);
        return parts;
    }
}
