using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>MEMBER_RESOURCE / MEMBER_RESOURCE_ATTRS (0x40/0x41): MSI-X vectors per VF.</summary>
[Trait("tier", "unit")]
public sealed class MemberResourceTests() : OwnerTest(useAllCommands: true)
{
    private AdminReply Resource(ulong member, byte operation, ulong value, ushort resource = 0)
    {
        var data = new byte[16];
        data[0] = operation;
        BinaryPrimitives.WriteUInt16LittleEndian(data.AsSpan(2), resource);
        BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(8), value);
        return _owner.Admin.Execute((ushort)AdminOpcode.MemberResource, 1, member, data, 16);
    }

    private (ulong Mask, uint Total, uint Assigned, ushort PerVfMax) Attrs()
    {
        var r = _owner.Admin.Execute((ushort)AdminOpcode.MemberResourceAttrs, 1, 0, default, 128);
        Assert.True(r.Ok);
        Assert.Equal(136u, r.UsedLength);
        return (BinaryPrimitives.ReadUInt64LittleEndian(r.Result), BinaryPrimitives.ReadUInt32LittleEndian(r.Result.AsSpan(8)),
            BinaryPrimitives.ReadUInt32LittleEndian(r.Result.AsSpan(12)), BinaryPrimitives.ReadUInt16LittleEndian(r.Result.AsSpan(16)));
    }

    [Fact]
    public void Assigning_and_querying_msix_vectors_of_an_idle_vf_updates_the_attributes()
    {
        var before = Attrs();
        Assert.Equal(0b111UL, before.Mask);
        Assert.Equal((16u, 8u, (ushort)64), (before.Total, before.Assigned, before.PerVfMax));
        var r = Resource(2, 1, 10);
        Assert.True(r.Ok);
        Assert.Equal(10UL, BinaryPrimitives.ReadUInt64LittleEndian(r.Result));
        Assert.Equal(10UL, BinaryPrimitives.ReadUInt64LittleEndian(Resource(2, 2, 0).Result));
        Assert.Equal(14u, Attrs().Assigned);
    }

    [Fact]
    public void Zero_too_many_unknown_resources_and_unknown_operations_are_invalid_fields()
    {
        foreach (var (op, value, resource) in new[] { ((byte)1, 0UL, (ushort)0), ((byte)1, 65UL, (ushort)0), ((byte)1, 4UL, (ushort)1), ((byte)7, 4UL, (ushort)0) })
        {
            var r = Resource(1, op, value, resource);
            Assert.Equal(((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidField), (r.Status, r.Qualifier));
        }
        Assert.Equal(8u, Attrs().Assigned); // nothing changed
    }

    [Fact]
    public void Assigning_to_a_vf_whose_driver_is_active_is_busy_and_the_pool_cannot_be_overdrawn()
    {
        using (var vf1 = new NetFrontEnd(_backend.Socket(1)))
            Assert.Equal((ushort)AdminStatus.Ebusy, Resource(1, 1, 8).Status);
        Assert.True(EchoBackend.WaitUntil(() => !_backend.Member(1).Endpoint.IsConnected));
        Assert.True(Resource(1, 1, 12).Ok);
        var r = Resource(2, 1, 5); // 12 + 5 > 16
        Assert.Equal(((ushort)AdminStatus.Enospc, (ushort)AdminQualifier.NoResource), (r.Status, r.Qualifier));
        Assert.Equal(4UL, BinaryPrimitives.ReadUInt64LittleEndian(Resource(2, 2, 0).Result));
        Assert.Equal(((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidMember), (Resource(3, 2, 0).Status, Resource(3, 2, 0).Qualifier));
    }
}
