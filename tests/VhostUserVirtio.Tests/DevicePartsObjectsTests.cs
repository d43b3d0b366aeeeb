using System.Buffers.Binary;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Tests;

/// <summary>
/// VIRTIO 1.4 §4.3–4.4 for device parts, device side (virtio-admin.md): VIRTIO_DEV_PARTS_CAP and the
/// DEV_PARTS resource objects, as Linux's virtio-vfio-pci uses them (§9.4) and as the failures the
/// spec lists demand. Each refused command changes nothing.
/// </summary>
[Trait("tier", "unit")]
public sealed class DevicePartsObjectsTests
{
    private readonly DevicePartsObjects _objects = new(getLimit: 4, setLimit: 2);

    private static byte[] CapSet(byte get, byte set, ushort id = DevicePartsObjects.DevPartsCap)
    {
        var d = new byte[10];
        BinaryPrimitives.WriteUInt16LittleEndian(d, id);
        d[8] = get;
        d[9] = set;
        return d;
    }

    private static byte[] Header(uint id, ushort type = DevicePartsObjects.DevPartsType)
    {
        var d = new byte[8];
        BinaryPrimitives.WriteUInt16LittleEndian(d, type);
        BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(4), id);
        return d;
    }

    /// <summary>CREATE/MODIFY data: hdr, le64 flags, u8 type, u8 reserved[7].</summary>
    private static byte[] ObjectData(uint id, byte kind, ulong flags = 0)
    {
        var d = new byte[24];
        Header(id).CopyTo(d, 0);
        BinaryPrimitives.WriteUInt64LittleEndian(d.AsSpan(8), flags);
        d[16] = kind;
        return d;
    }

    private static byte[] QueryData(uint id) => Header(id).Concat(new byte[8]).ToArray();

    private static void AssertStatus(AdminOutcome outcome, AdminStatus status)
    {
        Assert.Equal(status, outcome.Status);
        if (status != AdminStatus.Ok)
            Assert.NotEqual(AdminQualifier.Ok, outcome.Qualifier); // a failure always says why
    }

    [Fact]
    public void The_capability_list_names_dev_parts_and_device_cap_get_reports_the_device_limits()
    {
        var result = new byte[64];
        Assert.Equal(8, DevicePartsObjects.ListCapabilities(result).ResultLength);
        Assert.Equal(1, result[0]);
        var get = _objects.DeviceCapGet(CapSet(0, 0)[..8], result);
        AssertStatus(get, AdminStatus.Ok);
        Assert.Equal(2, get.ResultLength);
        Assert.Equal(new byte[] { 4, 2 }, result[..2]);
        AssertStatus(_objects.DeviceCapGet(CapSet(0, 0, id: 0x0800)[..8], result), AdminStatus.Enxio); // unknown id
    }

    [Fact]
    public void A_driver_may_only_lower_the_limits_and_until_it_sets_them_no_object_can_be_created()
    {
        AssertStatus(_objects.Create(1, ObjectData(0, DevicePartsObjects.GetObject)), AdminStatus.Einval); // unset limit = 0
        AssertStatus(_objects.DriverCapSet(CapSet(5, 1)), AdminStatus.Einval);
        Assert.Equal(0, _objects.DriverGetLimit);
        AssertStatus(_objects.DriverCapSet(CapSet(2, 1)), AdminStatus.Ok);
        AssertStatus(_objects.Create(1, ObjectData(0, DevicePartsObjects.GetObject)), AdminStatus.Ok);
    }

    [Fact]
    public void Objects_are_created_queried_modified_and_destroyed_with_the_statuses_the_spec_gives()
    {
        AssertStatus(_objects.DriverCapSet(CapSet(2, 1)), AdminStatus.Ok);
        AssertStatus(_objects.Create(1, ObjectData(0, DevicePartsObjects.GetObject)), AdminStatus.Ok);
        AssertStatus(_objects.Create(1, ObjectData(0, DevicePartsObjects.SetObject)), AdminStatus.Eexist);
        AssertStatus(_objects.Create(2, ObjectData(1, DevicePartsObjects.SetObject)), AdminStatus.Ok);
        AssertStatus(_objects.Create(2, ObjectData(2, DevicePartsObjects.SetObject)), AdminStatus.Enospc); // one SET allowed
        AssertStatus(_objects.Create(2, ObjectData(3, DevicePartsObjects.GetObject)), AdminStatus.Einval); // id past 2 + 1

        var result = new byte[16];
        var query = _objects.Query(QueryData(1), result);
        AssertStatus(query, AdminStatus.Ok);
        Assert.Equal(8, query.ResultLength);
        Assert.Equal(DevicePartsObjects.SetObject, result[0]);
        Assert.True(_objects.TryGet(1, out ulong member, out _));
        Assert.Equal(2UL, member);

        AssertStatus(_objects.Modify(ObjectData(0, DevicePartsObjects.SetObject)), AdminStatus.Enospc); // would be a second SET
        AssertStatus(_objects.Modify(ObjectData(2, DevicePartsObjects.GetObject)), AdminStatus.Enxio);
        AssertStatus(_objects.Query(QueryData(2), result), AdminStatus.Enxio);
        AssertStatus(_objects.Destroy(Header(2)), AdminStatus.Enxio);

        AssertStatus(_objects.Destroy(Header(1)), AdminStatus.Ok);
        AssertStatus(_objects.Create(2, ObjectData(1, DevicePartsObjects.SetObject)), AdminStatus.Ok); // the id comes back at once
        Assert.Equal(2, _objects.Count);
    }

    [Theory]
    [InlineData("flags")]
    [InlineData("reserved")]
    [InlineData("kind")]
    [InlineData("type")]
    [InlineData("short")]
    public void Malformed_object_data_is_an_invalid_field_and_creates_nothing(string what)
    {
        AssertStatus(_objects.DriverCapSet(CapSet(2, 1)), AdminStatus.Ok);
        var d = ObjectData(0, DevicePartsObjects.GetObject);
        switch (what)
        {
            case "flags": d[8] = 1; break;
            case "reserved": d[20] = 1; break;
            case "kind": d[16] = 2; break;
            case "type": d[0] = 0x01; d[1] = 0x02; break;
            case "short": d = d[..16]; break;
        }
        var outcome = _objects.Create(1, d);
        Assert.Equal(AdminStatus.Einval, outcome.Status);
        Assert.Equal(AdminQualifier.InvalidField, outcome.Qualifier);
        Assert.Equal(0, _objects.Count);
    }

    [Fact]
    public void Limits_cannot_drop_below_the_objects_that_exist_and_an_owner_reset_clears_everything()
    {
        AssertStatus(_objects.DriverCapSet(CapSet(2, 1)), AdminStatus.Ok);
        AssertStatus(_objects.Create(1, ObjectData(2, DevicePartsObjects.SetObject)), AdminStatus.Ok);
        AssertStatus(_objects.DriverCapSet(CapSet(2, 0)), AdminStatus.Ebusy);
        AssertStatus(_objects.DriverCapSet(CapSet(1, 1)), AdminStatus.Ebusy); // id 2 would be past the new range
        Assert.Equal(2, _objects.DriverGetLimit);
        _objects.Reset();
        Assert.Equal(0, _objects.Count);
        Assert.Equal(0, _objects.DriverGetLimit);
        AssertStatus(_objects.Create(1, ObjectData(0, DevicePartsObjects.GetObject)), AdminStatus.Einval);
    }

    [Fact]
    public void Query_returns_what_the_last_successful_modify_set_and_a_failed_modify_changes_nothing()
    {
        AssertStatus(_objects.DriverCapSet(CapSet(2, 1)), AdminStatus.Ok);
        AssertStatus(_objects.Create(1, ObjectData(0, DevicePartsObjects.GetObject)), AdminStatus.Ok);
        AssertStatus(_objects.Modify(ObjectData(0, DevicePartsObjects.SetObject)), AdminStatus.Ok);
        var result = new byte[16];
        AssertStatus(_objects.Query(QueryData(0), result), AdminStatus.Ok);
        Assert.Equal(new byte[] { DevicePartsObjects.SetObject, 0, 0, 0, 0, 0, 0, 0 }, result[..8]);
        Assert.True(_objects.TryGet(0, out ulong member, out _));
        Assert.Equal(1UL, member); // the object stays the member's it was created for

        // Refused MODIFYs: a second SET object (ENOSPC), flags, reserved bytes, an unknown kind (EINVAL).
        AssertStatus(_objects.Create(2, ObjectData(1, DevicePartsObjects.GetObject)), AdminStatus.Ok);
        AssertStatus(_objects.Modify(ObjectData(1, DevicePartsObjects.SetObject)), AdminStatus.Enospc);
        AssertStatus(_objects.Modify(ObjectData(1, DevicePartsObjects.SetObject, flags: 1)), AdminStatus.Einval);
        var reserved = ObjectData(1, DevicePartsObjects.SetObject);
        reserved[23] = 1;
        AssertStatus(_objects.Modify(reserved), AdminStatus.Einval);
        AssertStatus(_objects.Modify(ObjectData(1, 2)), AdminStatus.Einval);
        AssertStatus(_objects.Query(QueryData(1), result), AdminStatus.Ok);
        Assert.Equal(DevicePartsObjects.GetObject, result[0]);
        Assert.Equal(2, _objects.Count);
    }

    [Fact]
    public void Driver_cap_set_of_an_unknown_capability_fails_with_enxio_and_changes_nothing()
    {
        AssertStatus(_objects.DriverCapSet(CapSet(2, 1)), AdminStatus.Ok);
        AssertStatus(_objects.DriverCapSet(CapSet(1, 1, id: 0x0800)), AdminStatus.Enxio);
        AssertStatus(_objects.DriverCapSet(CapSet(1, 1, id: 0x1000)), AdminStatus.Enxio);
        Assert.Equal((2, 1), (_objects.DriverGetLimit, _objects.DriverSetLimit));
        var result = new byte[8];
        AssertStatus(_objects.DeviceCapGet(CapSet(0, 0, id: 0x1000)[..8], result), AdminStatus.Enxio);
    }

    [Fact]
    public void Object_ids_run_from_zero_below_the_sum_of_the_drivers_limits_and_are_unique_across_kinds()
    {
        AssertStatus(_objects.DriverCapSet(CapSet(2, 1)), AdminStatus.Ok);
        AssertStatus(_objects.Create(1, ObjectData(0, DevicePartsObjects.SetObject)), AdminStatus.Ok);
        AssertStatus(_objects.Create(1, ObjectData(0, DevicePartsObjects.GetObject)), AdminStatus.Eexist); // one id space for the type
        AssertStatus(_objects.Create(1, ObjectData(2, DevicePartsObjects.GetObject)), AdminStatus.Ok);
        AssertStatus(_objects.Create(1, ObjectData(3, DevicePartsObjects.GetObject)), AdminStatus.Einval);
        AssertStatus(_objects.Create(1, ObjectData(uint.MaxValue, DevicePartsObjects.GetObject)), AdminStatus.Einval);
        Assert.Equal(2, _objects.Count);
    }
}
