using System.Buffers.Binary;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Device-side statements of VIRTIO 1.4 "Administration Commands" about the in-use list across
/// device resets and group types (virtio-admin.md §3.4, §4.1). Each test reconnects the owner driver
/// itself: a disconnect resets the owner device (docs/owner-binding.md).
/// </summary>
[Trait("tier", "unit")]
public sealed class AdminNormativeTests : IDisposable
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov, Self = (ushort)AdminGroupType.Self;
    private readonly GroupBackend _backend = new(vfs: 2);

    public void Dispose() => _backend.Dispose();

    private static byte[] Bitmap(params AdminOpcode[] ops)
    {
        var b = new byte[16];
        AdminOpcodeSet.Of(ops).Write(b);
        return b;
    }

    private static byte[] MemberResourceQuery => [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    private static AdminReply Run(OwnerDriver o, AdminOpcode op, ushort group = SrIov, ulong member = 0, byte[]? data = null, int result = 16) =>
        o.Admin.Execute((ushort)op, group, member, data, result);

    private static void AssertOk(AdminReply r) =>
        Assert.True(r.Status == 0 && r.Qualifier == 0, $"expected OK with qualifier 0, got {r.Describe()}");

    private static void AssertInvalidOpcode(AdminReply r) =>
        Assert.True((r.Status, r.Qualifier) == ((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidOpcode), r.Describe());

    private OwnerDriver Connect() => OwnerDriver.Connect(_backend.Socket(0));

    /// <summary>Disconnecting and reconnecting the owner driver: the owner device is reset in between.</summary>
    private OwnerDriver Reconnect(OwnerDriver old)
    {
        old.Dispose();
        Assert.True(SpinWait.SpinUntil(() => !_backend.Member(0).Endpoint.IsConnected, TimeSpan.FromSeconds(10)));
        return Connect();
    }

    [Fact]
    public void Success_sets_status_ok_and_qualifier_zero_and_failure_a_non_ok_status()
    {
        using var o = Connect();
        AssertOk(Run(o, AdminOpcode.ListQuery));
        AssertOk(Run(o, AdminOpcode.ListUse, data: Bitmap(AdminOpcode.ListQuery, AdminOpcode.ListUse, AdminOpcode.MemberResource)));
        AssertOk(Run(o, AdminOpcode.MemberResource, member: 1, data: MemberResourceQuery));
        var failed = Run(o, AdminOpcode.NetMemberCtrl, member: 1, data: new byte[9]);
        Assert.NotEqual(0, failed.Status);
    }

    [Fact]
    public void After_a_successful_list_use_the_in_use_list_is_exactly_the_supplied_bitmap()
    {
        using var o = Connect();
        AssertOk(Run(o, AdminOpcode.ListUse, data: Bitmap(AdminOpcode.ListQuery, AdminOpcode.ListUse, AdminOpcode.MemberResource)));
        AssertOk(Run(o, AdminOpcode.MemberResource, member: 1, data: MemberResourceQuery));
        AssertInvalidOpcode(Run(o, AdminOpcode.LegacyCommonCfgRead, member: 1, data: [0], result: 4));
        AssertInvalidOpcode(Run(o, AdminOpcode.MemberResourceAttrs, result: 128));

        // A second LIST_USE replaces the list; it does not add to it.
        AssertOk(Run(o, AdminOpcode.ListUse, data: Bitmap(AdminOpcode.LegacyCommonCfgRead)));
        AssertOk(Run(o, AdminOpcode.LegacyCommonCfgRead, member: 1, data: [0], result: 4));
        AssertInvalidOpcode(Run(o, AdminOpcode.MemberResource, member: 1, data: MemberResourceQuery));
    }

    [Fact]
    public void After_device_reset_the_in_use_list_is_list_query_and_list_use_again()
    {
        var o = Connect();
        try
        {
            o.UseAllCommands();
            AssertOk(Run(o, AdminOpcode.MemberResource, member: 1, data: MemberResourceQuery));
            o = Reconnect(o);
            AssertInvalidOpcode(Run(o, AdminOpcode.MemberResource, member: 1, data: MemberResourceQuery));
            AssertOk(Run(o, AdminOpcode.ListQuery));
        }
        finally
        {
            o.Dispose();
        }
    }

    [Fact]
    public void List_commands_taken_out_of_use_by_a_list_use_come_back_with_the_next_device_reset()
    {
        var o = Connect();
        try
        {
            AssertOk(Run(o, AdminOpcode.ListUse, data: Bitmap(AdminOpcode.MemberResource), result: 0));
            AssertInvalidOpcode(Run(o, AdminOpcode.ListQuery));
            AssertOk(Run(o, AdminOpcode.MemberResource, member: 1, data: MemberResourceQuery));
            o = Reconnect(o);
            AssertOk(Run(o, AdminOpcode.ListQuery));
            AssertInvalidOpcode(Run(o, AdminOpcode.MemberResource, member: 1, data: MemberResourceQuery));
        }
        finally
        {
            o.Dispose();
        }
    }

    [Fact]
    public void After_device_reset_the_device_accepts_the_same_list_use_again()
    {
        var o = Connect();
        try
        {
            var used = o.UseAllCommands();
            o = Reconnect(o);
            AssertOk(Run(o, AdminOpcode.ListUse, data: used, result: 0));
            AssertOk(Run(o, AdminOpcode.MemberResource, member: 1, data: MemberResourceQuery));
        }
        finally
        {
            o.Dispose();
        }
    }

    [Fact]
    public void The_list_query_result_never_shrinks()
    {
        var o = Connect();
        try
        {
            byte[] Query(ushort group) => Run(o, AdminOpcode.ListQuery, group).Result;
            var sriov = Query(SrIov);
            var self = Query(Self);
            AssertOk(Run(o, AdminOpcode.ListUse, data: Bitmap(AdminOpcode.ListQuery, AdminOpcode.ListUse)));
            Assert.Equal(sriov, Query(SrIov));

            // VF Disable / Enable, then a device reset.
            o.Session.Connection.SetConfig(OwnerInformation.Offset + OwnerInformation.NumVfs, BitConverter.GetBytes((ushort)0));
            o.Session.Connection.SetConfig(OwnerInformation.Offset + OwnerInformation.NumVfs, BitConverter.GetBytes((ushort)2));
            Assert.Equal(sriov, Query(SrIov));
            o = Reconnect(o);
            Assert.Equal(sriov, Query(SrIov));
            Assert.Equal(self, Query(Self));
        }
        finally
        {
            o.Dispose();
        }
    }

    [Fact]
    public void Group_types_operate_independently_each_with_its_own_in_use_list()
    {
        using var o = Connect();
        var sriov = BinaryPrimitives.ReadUInt64LittleEndian(Run(o, AdminOpcode.ListQuery, SrIov).Result);
        var self = BinaryPrimitives.ReadUInt64LittleEndian(Run(o, AdminOpcode.ListQuery, Self).Result);
        Assert.NotEqual(sriov, self); // the lists differ per group type

        // A self-group LIST_USE without LIST_QUERY's bit does not touch the SR-IOV group's list...
        AssertOk(Run(o, AdminOpcode.ListUse, Self, data: Bitmap(AdminOpcode.ListUse)));
        AssertOk(Run(o, AdminOpcode.ListUse, SrIov, data: Bitmap(AdminOpcode.ListQuery, AdminOpcode.ListUse, AdminOpcode.MemberResource)));
        AssertOk(Run(o, AdminOpcode.MemberResource, member: 1, data: MemberResourceQuery));
        // ...and an opcode the SR-IOV group supports is not valid for the self group.
        AssertInvalidOpcode(Run(o, AdminOpcode.MemberResource, Self, data: MemberResourceQuery));
        // LIST_USE for a group must be a subset of that group's LIST_QUERY.
        var r = Run(o, AdminOpcode.ListUse, Self, data: Bitmap(AdminOpcode.ListQuery, AdminOpcode.MemberResource));
        Assert.True((r.Status, r.Qualifier) == ((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidField), r.Describe());
    }

    [Fact]
    public void Status_and_qualifier_are_always_written_even_into_a_bare_8_byte_writable_part_of_odd_buffers()
    {
        using var o = Connect();
        // 25-byte readable part (as Linux sends for a legacy read) and an 8-byte writable part.
        var readable = AdminQueueClient.Header((ushort)AdminOpcode.LegacyCommonCfgRead, SrIov, 1).Append((byte)0).ToArray();
        ushort head = o.Admin.Post(readable, 8, [25], [8]);
        o.Admin.Queue.Notify();
        var r = o.Admin.Complete(head);
        AssertInvalidOpcode(r); // not in use yet: refused, but status and qualifier were written
        Assert.Equal(8u, r.UsedLength);

        o.UseAllCommands();
        // Odd sizes on both sides are fine: 3 bytes of result room read 3 bytes of host features.
        head = o.Admin.Post(readable, 11, [7, 18], [5, 6]);
        o.Admin.Queue.Notify();
        r = o.Admin.Complete(head);
        AssertOk(r);
        Assert.Equal(11u, r.UsedLength);
        Assert.Equal(3, r.Result.Length);
    }
}
