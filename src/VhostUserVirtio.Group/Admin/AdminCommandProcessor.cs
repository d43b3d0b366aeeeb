using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Group.Admin;

/// <summary>What the processor needs to know about the group it administers.</summary>
public interface IAdminGroupState
{
    /// <summary>NumVFs: SR-IOV members that exist now (0 = VF Enable clear, the SR-IOV group does not exist).</summary>
    int NumVfs { get; }

    /// <summary>The net device of member <paramref name="id"/> (0 = the owner itself), or null if there is none.</summary>
    Devices.Net.NetDevice? NetDeviceOf(ulong id);

    /// <summary>Whether member <paramref name="id"/> has a driver attached (its front end is connected).</summary>
    bool MemberActive(ulong id);

    /// <summary>MSI-X vectors assigned per member (index = member id − 1), and the pool they come from.</summary>
    MsixPool Msix { get; }

    /// <summary>VF <paramref name="id"/>'s legacy register file, or null if there is no such VF.</summary>
    Legacy.LegacyNetInterface? LegacyOf(ulong id);

    /// <summary>VF <paramref name="id"/> (1..NumVfs), or null if there is no such VF.</summary>
    GroupMember? MemberOf(ulong id);

    /// <summary>Whether member <paramref name="id"/>'s driver (0 = the owner's) would see a change to its config space now.</summary>
    NetMemberReach ReachOf(ulong id) => NetMemberReach.None;
}

/// <summary>
/// Processes the commands of one admin virtqueue, strictly in queue order (VIRTIO 1.4 "Administration
/// Virtqueues"): container gathered from any number of readable descriptors and scattered over the
/// writable ones; validation in the spec's order (group, then opcode incl. the in-use list, then
/// member); status and qualifier always written; used length = bytes actually written; refused
/// commands change nothing. Runs on the group's data-path worker; allocates nothing per command.
/// </summary>
public sealed class AdminCommandProcessor
{
    private readonly IAdminGroupState _group;
    private readonly ILogger _logger;
    private readonly byte[] _request = new byte[AdminLayout.HeaderSize + AdminLayout.MaxData];
    private readonly byte[] _response = new byte[AdminLayout.StatusSize + AdminLayout.MaxResult];
    private AdminOpcodeSet _srIovInUse = Basic;
    private AdminOpcodeSet? _selfInUse;

    /// <summary>LIST_QUERY and LIST_USE: the in-use list after a reset.</summary>
    public static readonly AdminOpcodeSet Basic = AdminOpcodeSet.Of(AdminOpcode.ListQuery, AdminOpcode.ListUse);

    public AdminCommandProcessor(IAdminGroupState group, ILogger logger, ResourceObjectOpcodes objectOpcodes = ResourceObjectOpcodes.Paragraphs,
        AdminProfile profile = AdminProfile.Spec)
    {
        _group = group;
        _logger = logger;
        _modifyOpcode = objectOpcodes == ResourceObjectOpcodes.Paragraphs ? (ushort)0xb : (ushort)0xc;
        _queryOpcode = objectOpcodes == ResourceObjectOpcodes.Paragraphs ? (ushort)0xc : (ushort)0xb;
        _parts = new DevicePartsCommands(group, Objects);
        _sockets = new MemberSocketCommands(group, logger);
        Profile = profile;
        if (profile == AdminProfile.Seed)
        {
            // The device migration proposal's commands take 0x7–0xd for the VFs; 0xe–0x11 are not offered, and the
            // self group's capabilities go too, since they only describe resource objects.
            _seed = new SeedMigrationCommands(group, logger);
            var seed = AdminOpcodeSet.Of(Enumerable.Range(SeedOpcode.DevModeGet, 7).Select(o => (AdminOpcode)o).ToArray());
            SrIovSupported = new AdminOpcodeSet(Common.Word0 | seed.Word0, Common.Word1);
            SelfSupported = Basic;
        }
        else
        {
            var parts = AdminOpcodeSet.Of(AdminOpcode.ResourceObjCreate, AdminOpcode.ResourceObjModify, AdminOpcode.ResourceObjQuery,
                AdminOpcode.ResourceObjDestroy, AdminOpcode.DevPartsMetadataGet, AdminOpcode.DevPartsGet, AdminOpcode.DevPartsSet, AdminOpcode.DevModeSet);
            SrIovSupported = new AdminOpcodeSet(Common.Word0 | parts.Word0, Common.Word1);
            SelfSupported = AdminOpcodeSet.Of(AdminOpcode.ListQuery, AdminOpcode.ListUse,
                AdminOpcode.CapIdListQuery, AdminOpcode.DeviceCapGet, AdminOpcode.DriverCapSet);
        }
    }

    private readonly ushort _modifyOpcode, _queryOpcode;
    private readonly DevicePartsCommands _parts;
    private readonly MemberSocketCommands _sockets;
    private readonly SeedMigrationCommands? _seed;

    /// <summary>The SR-IOV opcodes both profiles offer: list, legacy interface, and the project's member commands.</summary>
    private static readonly AdminOpcodeSet Common = AdminOpcodeSet.Of(AdminOpcode.ListQuery, AdminOpcode.ListUse,
        AdminOpcode.LegacyCommonCfgWrite, AdminOpcode.LegacyCommonCfgRead, AdminOpcode.LegacyDevCfgWrite,
        AdminOpcode.LegacyDevCfgRead, AdminOpcode.LegacyNotifyInfo,
        AdminOpcode.MemberResource, AdminOpcode.MemberResourceAttrs, AdminOpcode.NetMemberCtrl, AdminOpcode.MemberSocket);

    /// <summary>Which opcodes 0x7 and above mean (docs/owner-binding.md "Admin command profiles").</summary>
    public AdminProfile Profile { get; }

    /// <summary>VIRTIO_DEV_PARTS_CAP and the device parts objects the owner's driver made.</summary>
    public DevicePartsObjects Objects { get; } = new();

    /// <summary>
    /// Opcodes supported for the SR-IOV group (LIST_QUERY result). Never shrinks. Spec profile: 0x0–0x6,
    /// resource objects 0xa–0xd, device parts 0xe–0x11; seed profile: 0x0–0x6 and the device migration proposal's 0x7–0xd.
    /// Both: the project block 0x40–0x43.
    /// </summary>
    public AdminOpcodeSet SrIovSupported { get; }

    /// <summary>Opcodes supported for the self group: the list commands, and in the spec profile the capabilities (0x7–0x9).</summary>
    public AdminOpcodeSet SelfSupported { get; }

    /// <summary>Commands processed, and how many failed.</summary>
    public long Commands { get; private set; }
    public long Failures { get; private set; }

    /// <summary>Owner device reset: every group's in-use list goes back to LIST_QUERY + LIST_USE.</summary>
    public void Reset()
    {
        _srIovInUse = Basic;
        _selfInUse = null;
        Objects.Reset();
        _seed?.Reset();
        // The owner driver that stopped members is gone: none stays frozen without anyone to resume it.
        for (int id = 1; id <= _group.NumVfs; id++)
            _group.MemberOf((ulong)id)?.Endpoint.Backend.SetMemberStopped(false);
    }

    /// <summary>Handles one command chain; returns the used length (bytes written).</summary>
    public uint Handle(DescriptorChain chain)
    {
        // Readable part: shorter than defined reads as zeros, longer is ignored (tolerance rule).
        var request = _request.AsSpan();
        var reader = chain.Reader();
        int read = reader.Read(request);
        request[read..].Clear();
        int dataLength = Math.Max(0, Math.Min(read, request.Length) - AdminLayout.HeaderSize);

        ushort opcode = BinaryPrimitives.ReadUInt16LittleEndian(request);
        ushort groupType = BinaryPrimitives.ReadUInt16LittleEndian(request[2..]);
        ulong member = BinaryPrimitives.ReadUInt64LittleEndian(request[16..]);
        var data = request.Slice(AdminLayout.HeaderSize, dataLength);

        var response = _response.AsSpan();
        // Reads of legacy registers read as many bytes as the driver left room for.
        int resultRoom = (int)Math.Min(Math.Max(chain.WritableLength, AdminLayout.StatusSize) - AdminLayout.StatusSize, AdminLayout.MaxResult);
        var result = response[AdminLayout.StatusSize..];
        // Data beyond what the queue reads is ignored (tolerance rule); a context write must not lose any.
        bool dataCut = chain.ReadableLength > request.Length;
        var outcome = Execute(opcode, groupType, member, data, dataCut, result, resultRoom);
        Commands++;
        if (outcome.Status != AdminStatus.Ok)
        {
            Failures++;
            _logger.LogDebug("admin: opcode 0x{Opcode:x} group {Group} member {Member}: {Status}/{Qualifier}",
                opcode, groupType, member, outcome.Status, outcome.Qualifier);
        }

        BinaryPrimitives.WriteUInt16LittleEndian(response, (ushort)outcome.Status);
        BinaryPrimitives.WriteUInt16LittleEndian(response[2..], (ushort)outcome.Qualifier);
        response.Slice(4, 4).Clear();
        // Writable part: write what fits of the defined structure; the used length says how much.
        var writer = chain.Writer();
        writer.Write(response[..(AdminLayout.StatusSize + outcome.ResultLength)]);
        return writer.Written;
    }

    private AdminOutcome Execute(ushort opcode, ushort groupType, ulong member, ReadOnlySpan<byte> data, bool dataCut, Span<byte> result, int resultRoom)
    {
        // 1. Group.
        AdminOpcodeSet supported;
        bool inUse;
        switch ((AdminGroupType)groupType)
        {
            case AdminGroupType.SrIov when _group.NumVfs > 0:
                supported = SrIovSupported;
                inUse = _srIovInUse.Contains(opcode);
                break;
            case AdminGroupType.Self:
                supported = SelfSupported;
                // Linux never sends LIST_USE for the self group: its commands are usable until the
                // driver chooses a self-group list itself.
                inUse = _selfInUse?.Contains(opcode) ?? true;
                break;
            default:
                return AdminOutcome.Invalid(AdminQualifier.InvalidGroup);
        }

        // 2. Opcode: supported for this group and in use. The in-use list is exactly what the last
        //    LIST_USE said: one that clears bits 0 and 1 (Linux sends that, and then never sends the
        //    list commands again) takes LIST_QUERY and LIST_USE out of use until the next reset.
        bool listCommand = opcode is (ushort)AdminOpcode.ListQuery or (ushort)AdminOpcode.ListUse;
        bool groupWide = listCommand || opcode == (ushort)AdminOpcode.MemberResourceAttrs;
        if (!supported.Contains(opcode) || !inUse)
            return AdminOutcome.Invalid(AdminQualifier.InvalidOpcode);

        // 3. Member (only commands that address one; the list commands do not). NET_MEMBER_CTRL may
        //    also name the owner itself as member 0 (docs/owner-binding.md).
        bool ownerAllowed = opcode == (ushort)AdminOpcode.NetMemberCtrl && member == 0;
        if (!groupWide && !ownerAllowed && (AdminGroupType)groupType == AdminGroupType.SrIov && (member < 1 || member > (ulong)_group.NumVfs))
            return AdminOutcome.Invalid(AdminQualifier.InvalidMember);

        if (_seed != null && (AdminGroupType)groupType == AdminGroupType.SrIov)
        {
            if (SeedOpcode.Contains(opcode))
                return _seed.Execute(opcode, member, data, dataCut, result, resultRoom);
            if (ChangesMember(opcode, member, data) && _seed.Frozen(member))
                return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        }

        switch ((AdminOpcode)opcode)
        {
            case AdminOpcode.ListQuery:
                supported.Write(result);
                return AdminOutcome.Ok(supported.WireLength);
            case AdminOpcode.ListUse:
                if (!AdminOpcodeSet.TryRead(data, out var wanted) || !wanted.IsSubsetOf(supported))
                    return AdminOutcome.Invalid(AdminQualifier.InvalidField);
                if ((AdminGroupType)groupType == AdminGroupType.SrIov)
                    _srIovInUse = wanted;
                else
                    _selfInUse = wanted;
                return AdminOutcome.Ok();
            case AdminOpcode.LegacyCommonCfgRead:
            case AdminOpcode.LegacyDevCfgRead:
                // Data: u8 offset. Length: the result room the driver supplied. The member is looked up
                // once: VFs may be disabled by the control loop between the check above and here.
                return _group.LegacyOf(member) is { } reader
                    ? reader.Read(opcode == (ushort)AdminOpcode.LegacyCommonCfgRead, data.IsEmpty ? 0 : data[0], result[..resultRoom])
                    : AdminOutcome.Invalid(AdminQualifier.InvalidMember);
            case AdminOpcode.LegacyCommonCfgWrite:
            case AdminOpcode.LegacyDevCfgWrite:
                // Data: u8 offset; u8 reserved[7]; u8 data[].
                return _group.LegacyOf(member) is { } writer
                    ? writer.Write(opcode == (ushort)AdminOpcode.LegacyCommonCfgWrite, data.IsEmpty ? 0 : data[0], data.Length > 8 ? data[8..] : default)
                    : AdminOutcome.Invalid(AdminQualifier.InvalidMember);
            case AdminOpcode.LegacyNotifyInfo:
                return Legacy.LegacyNetInterface.NotifyInfo(result);
            case AdminOpcode.NetMemberCtrl:
                return NetMemberCtrl(member, data, result[..resultRoom]);
            case AdminOpcode.MemberSocket:
                return _sockets.Execute(member, data, result, resultRoom);
            case AdminOpcode.MemberResource:
                return MemberResource(member, data, result);
            case AdminOpcode.MemberResourceAttrs:
                return _group.Msix.WriteAttributes(result);
            case AdminOpcode.CapIdListQuery:
                return DevicePartsObjects.ListCapabilities(result);
            case AdminOpcode.DeviceCapGet:
                return Objects.DeviceCapGet(data, result);
            case AdminOpcode.DriverCapSet:
                return Objects.DriverCapSet(data);
            case AdminOpcode.ResourceObjCreate:
                return Objects.Create(member, data);
            case AdminOpcode.ResourceObjModify or AdminOpcode.ResourceObjQuery when opcode == _modifyOpcode:
                return Objects.Modify(data);
            case AdminOpcode.ResourceObjModify or AdminOpcode.ResourceObjQuery when opcode == _queryOpcode:
                return Objects.Query(data, result);
            case AdminOpcode.ResourceObjDestroy:
                return Objects.Destroy(data);
            case AdminOpcode.DevPartsMetadataGet:
                return _parts.MetadataGet(member, data, result, resultRoom);
            case AdminOpcode.DevPartsGet:
                return _parts.Get(member, data, result, resultRoom);
            case AdminOpcode.DevPartsSet:
                return _parts.Set(member, data);
            case AdminOpcode.DevModeSet:
                return _parts.ModeSet(member, data);
            default:
                return AdminOutcome.Invalid(AdminQualifier.InvalidOpcode);
        }
    }

    /// <summary>
    /// Commands that can change a VF's state, refused while it is frozen (seed profile): legacy writes,
    /// legacy common reads (reading ISR clears it), NET_MEMBER_CTRL and a MEMBER_RESOURCE assign.
    /// </summary>
    private static bool ChangesMember(ushort opcode, ulong member, ReadOnlySpan<byte> data) => (AdminOpcode)opcode switch
    {
        AdminOpcode.LegacyCommonCfgWrite or AdminOpcode.LegacyDevCfgWrite or AdminOpcode.LegacyCommonCfgRead => true,
        AdminOpcode.NetMemberCtrl => member != 0,
        AdminOpcode.MemberResource => !data.IsEmpty && data[0] == MemberResourceData.Assign,
        _ => false,
    };

    /// <summary>
    /// MEMBER_RESOURCE (after the MSI-X vector management proposal): data {u8 operation (1 assign, 2 query); u8 reserved; le16 resource
    /// (0 = MSI-X vectors); u8 reserved[4]; le64 resource_val}, result {le64 resource_val; u8 reserved[8]}.
    /// </summary>
    private AdminOutcome MemberResource(ulong member, ReadOnlySpan<byte> data, Span<byte> result)
    {
        Span<byte> d = stackalloc byte[16];
        d.Clear();
        data[..Math.Min(16, data.Length)].CopyTo(d);
        byte operation = d[0];
        ushort resource = BinaryPrimitives.ReadUInt16LittleEndian(d[2..]);
        ulong value = BinaryPrimitives.ReadUInt64LittleEndian(d[8..]);
        if (resource != 0 || operation is not (MemberResourceData.Assign or MemberResourceData.Query))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        int index = (int)(member - 1);
        if (operation == MemberResourceData.Assign)
        {
            if (value == 0 || value > (ulong)_group.Msix.PerVfMax)
                return AdminOutcome.Invalid(AdminQualifier.InvalidField);
            if (_group.MemberActive(member))
                return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
            if (!_group.Msix.TryAssign(index, (int)value))
                return new AdminOutcome(AdminStatus.Enospc, AdminQualifier.NoResource);
        }
        result[..16].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)_group.Msix.Assigned(index));
        return AdminOutcome.Ok(16);
    }

    /// <summary>
    /// NET_MEMBER_CTRL (after the virtio-net admin control virtqueue proposal): {u8 class; u8 command; u8 reserved[6]; command data}, applied to the
    /// member as if its own control queue had received it, plus the owner-only trust and link classes.
    /// With 8 bytes of result room, the result is the member's <see cref="NetMemberReach"/> (le64):
    /// whether its driver can see the change at all.
    /// </summary>
    private AdminOutcome NetMemberCtrl(ulong member, ReadOnlySpan<byte> data, Span<byte> result)
    {
        if (data.Length < 8)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        var device = _group.NetDeviceOf(member);
        if (device == null)
            return AdminOutcome.Invalid(AdminQualifier.InvalidMember);
        Span<byte> before = stackalloc byte[Devices.Net.VirtioNet.ConfigSize];
        Span<byte> after = stackalloc byte[Devices.Net.VirtioNet.ConfigSize];
        device.ReadConfig(0, before);
        byte ack = Devices.Net.NetControl.Apply(device, data[0], data[1], data[8..]);
        if (ack != Devices.Net.VirtioNet.Ok)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        device.ReadConfig(0, after);
        if (!before.SequenceEqual(after))
            _group.LegacyOf(member)?.ConfigChanged(); // a legacy driver sees it in ISR
        _logger.LogInformation("admin: NET_MEMBER_CTRL class 0x{Class:x} command {Command} applied to {Device}", data[0], data[1], device.Name);
        if (result.Length < 8)
            return AdminOutcome.Ok();
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)_group.ReachOf(member));
        return AdminOutcome.Ok(8);
    }
}
