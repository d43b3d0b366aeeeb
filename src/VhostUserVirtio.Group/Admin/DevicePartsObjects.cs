using System.Buffers.Binary;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Group.Admin;

/// <summary>
/// Which opcodes RESOURCE_OBJ_MODIFY and RESOURCE_OBJ_QUERY use. VIRTIO 1.4 contradicts itself
/// (virtio-admin.md §4.4): its opcode table says QUERY = 0xb, MODIFY = 0xc; the command paragraphs say
/// MODIFY = 0xb, QUERY = 0xc. Linux sends neither, so the choice only matters to other drivers.
/// </summary>
public enum ResourceObjectOpcodes
{
    /// <summary>The command paragraphs: MODIFY = 0xb, QUERY = 0xc (the default).</summary>
    Paragraphs,
    /// <summary>The opcode table: QUERY = 0xb, MODIFY = 0xc (what a bhyve-based device does).</summary>
    Table,
}

/// <summary>
/// The owner's capabilities and resource objects for device parts (VIRTIO 1.4 §4.3–4.4,
/// virtio-admin.md): VIRTIO_DEV_PARTS_CAP (device limits, driver limits set by DRIVER_CAP_SET) and
/// VIRTIO_RESOURCE_OBJ_DEV_PARTS objects (GET or SET, bound to one member). Objects belong to the
/// owner driver: they survive a member's reset and go only with an owner reset, so Linux, which frees
/// an id only when DESTROY succeeds, never leaks one (§9.4's recommendation). Every refused command
/// changes nothing. Runs on the group's worker with the rest of the admin queue.
/// </summary>
public sealed class DevicePartsObjects
{
    /// <summary>Capability id of VIRTIO_DEV_PARTS_CAP.</summary>
    public const ushort DevPartsCap = 0x0000;
    /// <summary>Resource object type VIRTIO_RESOURCE_OBJ_DEV_PARTS.</summary>
    public const ushort DevPartsType = 0x0000;
    /// <summary>The object's <c>type</c> field: a GET object reads parts, a SET object writes them.</summary>
    public const byte GetObject = 0, SetObject = 1;

    private readonly Dictionary<uint, (ulong Member, byte Kind)> _objects = new();

    /// <param name="getLimit">GET objects the device can hold (u8).</param>
    /// <param name="setLimit">SET objects the device can hold (u8).</param>
    public DevicePartsObjects(byte getLimit = 16, byte setLimit = 16)
    {
        DeviceGetLimit = getLimit;
        DeviceSetLimit = setLimit;
    }

    public byte DeviceGetLimit { get; }
    public byte DeviceSetLimit { get; }
    /// <summary>The limits the driver chose (DRIVER_CAP_SET); 0 until it does, and after a reset.</summary>
    public byte DriverGetLimit { get; private set; }
    public byte DriverSetLimit { get; private set; }
    public int Count => _objects.Count;

    /// <summary>Owner reset: the driver's capabilities are unset and every object destroyed.</summary>
    public void Reset()
    {
        DriverGetLimit = DriverSetLimit = 0;
        _objects.Clear();
    }

    /// <summary>The object <paramref name="id"/> if it exists, with the member and kind it was created for.</summary>
    public bool TryGet(uint id, out ulong member, out byte kind)
    {
        bool found = _objects.TryGetValue(id, out var o);
        (member, kind) = found ? o : (0UL, (byte)0);
        return found;
    }

    // ---- capabilities (self group) ----

    /// <summary>CAP_ID_LIST_QUERY: a bitmap of the capability ids the device has (bit 0: VIRTIO_DEV_PARTS_CAP).</summary>
    public static AdminOutcome ListCapabilities(Span<byte> result)
    {
        result[..8].Clear();
        result[0] = 1 << DevPartsCap;
        return AdminOutcome.Ok(8);
    }

    /// <summary>DEVICE_CAP_GET: data {le16 id; u8 reserved[6]} → the device's capability.</summary>
    public AdminOutcome DeviceCapGet(ReadOnlySpan<byte> data, Span<byte> result)
    {
        if (data.Length < 2)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (BinaryPrimitives.ReadUInt16LittleEndian(data) != DevPartsCap)
            return new AdminOutcome(AdminStatus.Enxio, AdminQualifier.InvalidField);
        result[0] = DeviceGetLimit;
        result[1] = DeviceSetLimit;
        return AdminOutcome.Ok(2);
    }

    /// <summary>
    /// DRIVER_CAP_SET: data {le16 id; u8 reserved[6]; u8 get_limit; u8 set_limit}. The driver may only
    /// lower the device's limits, and not below the objects that exist (EBUSY).
    /// </summary>
    public AdminOutcome DriverCapSet(ReadOnlySpan<byte> data)
    {
        if (data.Length < 10)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (BinaryPrimitives.ReadUInt16LittleEndian(data) != DevPartsCap)
            return new AdminOutcome(AdminStatus.Enxio, AdminQualifier.InvalidField);
        byte get = data[8], set = data[9];
        if (get > DeviceGetLimit || set > DeviceSetLimit)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (CountOf(GetObject) > get || CountOf(SetObject) > set || _objects.Keys.Any(id => id >= (uint)(get + set)))
            return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        DriverGetLimit = get;
        DriverSetLimit = set;
        return AdminOutcome.Ok();
    }

    // ---- resource objects ----

    /// <summary>The object header every resource-object and parts command starts with: {le16 type; u8 reserved[2]; le32 id}.</summary>
    public static bool TryReadHeader(ReadOnlySpan<byte> data, out ushort type, out uint id)
    {
        type = 0;
        id = 0;
        if (data.Length < 8 || data[2] != 0 || data[3] != 0)
            return false;
        type = BinaryPrimitives.ReadUInt16LittleEndian(data);
        id = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
        return true;
    }

    /// <summary>RESOURCE_OBJ_CREATE: data {hdr; le64 flags (0); u8 type (GET 0, SET 1); u8 reserved[7]} for <paramref name="member"/>.</summary>
    public AdminOutcome Create(ulong member, ReadOnlySpan<byte> data)
    {
        if (ValidateObjectData(data, out uint id) is { } invalid)
            return invalid;
        if (_objects.ContainsKey(id))
            return new AdminOutcome(AdminStatus.Eexist, AdminQualifier.InvalidField);
        byte kind = data[16];
        if (CountOf(kind) >= (kind == GetObject ? DriverGetLimit : DriverSetLimit))
            return new AdminOutcome(AdminStatus.Enospc, AdminQualifier.NoResource);
        _objects[id] = (member, kind);
        return AdminOutcome.Ok();
    }

    /// <summary>RESOURCE_OBJ_MODIFY: the same data as CREATE, for an object that exists (its member stays).</summary>
    public AdminOutcome Modify(ReadOnlySpan<byte> data)
    {
        if (ValidateObjectData(data, out uint id) is { } invalid)
            return invalid;
        if (!_objects.TryGetValue(id, out var o))
            return new AdminOutcome(AdminStatus.Enxio, AdminQualifier.InvalidField);
        byte kind = data[16];
        if (kind != o.Kind && CountOf(kind) >= (kind == GetObject ? DriverGetLimit : DriverSetLimit))
            return new AdminOutcome(AdminStatus.Enospc, AdminQualifier.NoResource);
        _objects[id] = (o.Member, kind);
        return AdminOutcome.Ok();
    }

    /// <summary>RESOURCE_OBJ_QUERY: data {hdr; le64 flags (0)} → what the last CREATE/MODIFY set: {u8 type; u8 reserved[7]}.</summary>
    public AdminOutcome Query(ReadOnlySpan<byte> data, Span<byte> result)
    {
        if (!TryReadHeader(data, out ushort type, out uint id) || type != DevPartsType || data.Length < 16 ||
            BinaryPrimitives.ReadUInt64LittleEndian(data[8..]) != 0)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (!_objects.TryGetValue(id, out var o))
            return new AdminOutcome(AdminStatus.Enxio, AdminQualifier.InvalidField);
        result[..8].Clear();
        result[0] = o.Kind;
        return AdminOutcome.Ok(8);
    }

    /// <summary>RESOURCE_OBJ_DESTROY: data {hdr}. A destroyed id may be created again at once.</summary>
    public AdminOutcome Destroy(ReadOnlySpan<byte> data)
    {
        if (!TryReadHeader(data, out ushort type, out uint id) || type != DevPartsType)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        return _objects.Remove(id) ? AdminOutcome.Ok() : new AdminOutcome(AdminStatus.Enxio, AdminQualifier.InvalidField);
    }

    /// <summary>Header, flags and object data of CREATE/MODIFY: known type, id within the driver's limit, zero flags and reserved bytes.</summary>
    private AdminOutcome? ValidateObjectData(ReadOnlySpan<byte> data, out uint id)
    {
        if (!TryReadHeader(data, out ushort type, out id) || type != DevPartsType || data.Length < 24 ||
            BinaryPrimitives.ReadUInt64LittleEndian(data[8..]) != 0 || data[16] > SetObject || data[17..24].ContainsAnyExcept((byte)0))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (id >= (uint)(DriverGetLimit + DriverSetLimit))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        return null;
    }

    private int CountOf(byte kind)
    {
        int n = 0;
        foreach (var o in _objects.Values)
            if (o.Kind == kind)
                n++;
        return n;
    }
}
