using System.Buffers.Binary;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>VIRTIO 1.4's two readings of the MODIFY/QUERY opcodes, as the owner is configured.</summary>
[Trait("tier", "unit")]
public sealed class ResourceObjectOpcodeTests
{
    [Theory]
    [InlineData(ResourceObjectOpcodes.Paragraphs, 0xc)]
    [InlineData(ResourceObjectOpcodes.Table, 0xb)]
    public void Query_answers_on_the_opcode_the_configured_reading_gives_it(ResourceObjectOpcodes reading, ushort queryOpcode)
    {
        using var backend = new GroupBackend(vfs: 1, configure: o => o with { ResourceObjectOpcodes = reading });
        using var owner = OwnerDriver.Connect(backend.Socket(0));
        owner.UseAllCommands();
        Assert.True(owner.Admin.Execute((ushort)AdminOpcode.DriverCapSet, (ushort)AdminGroupType.Self, 0, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1], 0).Ok);
        Assert.True(owner.Admin.Execute((ushort)AdminOpcode.ResourceObjCreate, (ushort)AdminGroupType.SrIov, 1,
            [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 0).Ok);
        var query = owner.Admin.Execute(queryOpcode, (ushort)AdminGroupType.SrIov, 1, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
        Assert.True(query.Ok, query.Describe());
        Assert.Equal(1, query.Result[0]); // a SET object, as created
        // The other opcode is MODIFY: the same object data, accepted.
        ushort modify = (ushort)(queryOpcode == 0xc ? 0xb : 0xc);
        Assert.True(owner.Admin.Execute(modify, (ushort)AdminGroupType.SrIov, 1,
            [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 0).Ok);
    }
}
