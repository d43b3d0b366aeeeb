using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The owner's admin virtqueue over vhost-user, driven by the owner-driver library. Test names
/// follow the device-side normative statements of VIRTIO 1.4 "Administration Commands".
/// </summary>
[Trait("tier", "unit")]
public sealed class AdminQueueTests() : OwnerTest(useAllCommands: false)
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov, Self = (ushort)AdminGroupType.Self;

    private AdminReply Run(AdminOpcode op, ushort group = SrIov, ulong member = 0, byte[]? data = null, int result = 64) =>
        _owner.Admin.Execute((ushort)op, group, member, data, result);

    private static void AssertStatus(AdminReply r, AdminStatus status, AdminQualifier qualifier)
    {
        Assert.Equal((ushort)status, r.Status);
        Assert.Equal((ushort)qualifier, r.Qualifier);
    }

    private static byte[] Bitmap(params AdminOpcode[] ops)
    {
        var b = new byte[8];
        AdminOpcodeSet.Of(ops).Write(b);
        return b;
    }

    [Fact]
    public void Owner_information_block_locates_the_admin_queue_and_reports_the_vfs()
    {
        Assert.Equal(3, _owner.Info.AdminQueueIndex); // rx 0, tx 1, control 2, then admin
        Assert.Equal(1, _owner.Info.AdminQueueNum);
        Assert.Equal((2, 2), (_owner.Info.TotalVfs, _owner.Info.NumVfs));
    }

    [Fact]
    public void List_query_result_always_has_bits_0_and_1_set_for_every_supported_group()
    {
        foreach (var group in new[] { SrIov, Self })
        {
            var r = Run(AdminOpcode.ListQuery, group, result: 8);
            AssertStatus(r, AdminStatus.Ok, AdminQualifier.Ok);
            Assert.Equal(0b11UL, BinaryPrimitives.ReadUInt64LittleEndian(r.Result) & 0b11);
            Assert.Equal(16u, r.UsedLength); // status + one le64 word: bytes written, exactly
        }
    }

    [Fact]
    public void Invalid_group_type_fails_with_einval_invalid_group()
    {
        AssertStatus(Run(AdminOpcode.ListQuery, group: 7), AdminStatus.Einval, AdminQualifier.InvalidGroup);
    }

    [Fact]
    public void Sriov_group_commands_fail_with_invalid_group_while_no_vf_exists()
    {
        using var backend = new GroupBackend(vfs: 0);
        using var owner = OwnerDriver.Connect(backend.Socket(0));
        var r = owner.Admin.Execute((ushort)AdminOpcode.ListQuery, SrIov, 0, default, 8);
        AssertStatus(r, AdminStatus.Einval, AdminQualifier.InvalidGroup);
        Assert.Equal(8u, r.UsedLength);
    }

    [Fact]
    public void Unsupported_opcode_fails_with_einval_invalid_opcode_after_the_group_check()
    {
        AssertStatus(Run((AdminOpcode)0x1234), AdminStatus.Einval, AdminQualifier.InvalidOpcode);
        // The group is checked first: a bad group with a bad opcode reports the group.
        AssertStatus(Run((AdminOpcode)0x1234, group: 9), AdminStatus.Einval, AdminQualifier.InvalidGroup);
    }

    [Fact]
    public void List_use_of_an_unsupported_opcode_fails_with_invalid_field_and_changes_nothing()
    {
        AssertStatus(Run(AdminOpcode.ListUse, data: Bitmap(AdminOpcode.ListQuery, AdminOpcode.ListUse, (AdminOpcode)0x30)),
            AdminStatus.Einval, AdminQualifier.InvalidField);
        var extraWord = new byte[24];
        extraWord[20] = 1; // a bit far beyond any supported opcode
        AssertStatus(Run(AdminOpcode.ListUse, data: extraWord), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertStatus(Run(AdminOpcode.ListQuery), AdminStatus.Ok, AdminQualifier.Ok);
    }

    [Fact]
    public void List_use_without_bits_0_and_1_as_linux_sends_it_is_accepted_and_takes_the_list_commands_out_of_use()
    {
        // What Linux sends after its LIST_QUERY: every command it will use, without the list commands.
        AssertStatus(Run(AdminOpcode.ListUse, data: Bitmap(AdminOpcode.LegacyCommonCfgRead, AdminOpcode.MemberResource)), AdminStatus.Ok, AdminQualifier.Ok);
        AssertStatus(Run(AdminOpcode.LegacyCommonCfgRead, member: 1, data: [0], result: 4), AdminStatus.Ok, AdminQualifier.Ok);
        // The in-use list is exactly that bitmap now: the list commands fail until the next reset.
        AssertStatus(Run(AdminOpcode.ListQuery), AdminStatus.Einval, AdminQualifier.InvalidOpcode);
        AssertStatus(Run(AdminOpcode.ListUse, data: Bitmap(AdminOpcode.ListQuery, AdminOpcode.ListUse)), AdminStatus.Einval, AdminQualifier.InvalidOpcode);
        AssertStatus(Run(AdminOpcode.LegacyCommonCfgRead, member: 1, data: [0], result: 4), AdminStatus.Ok, AdminQualifier.Ok);
    }

    [Fact]
    public void Self_group_commands_are_not_blocked_by_a_missing_self_group_list_use()
    {
        AssertStatus(Run(AdminOpcode.ListUse, data: Bitmap(AdminOpcode.ListQuery, AdminOpcode.ListUse)), AdminStatus.Ok, AdminQualifier.Ok);
        AssertStatus(Run(AdminOpcode.ListQuery, group: Self), AdminStatus.Ok, AdminQualifier.Ok);
    }

    [Fact]
    public void A_short_readable_part_reads_as_zeros_and_a_longer_one_is_ignored()
    {
        // Only 4 header bytes (opcode LIST_QUERY = 0, group_type SR-IOV): the rest reads as zero.
        var header = AdminQueueClient.Header((ushort)AdminOpcode.ListQuery, SrIov, 0)[..4];
        ushort head = _owner.Admin.Post(header, 16, [4], [16]);
        _owner.Admin.Queue.Notify();
        AssertStatus(_owner.Admin.Complete(head), AdminStatus.Ok, AdminQualifier.Ok);

        var longer = AdminQueueClient.Header((ushort)AdminOpcode.ListQuery, SrIov, 0).Concat(new byte[100]).ToArray();
        head = _owner.Admin.Post(longer, 16, [longer.Length], [16]);
        _owner.Admin.Queue.Notify();
        AssertStatus(_owner.Admin.Complete(head), AdminStatus.Ok, AdminQualifier.Ok);
    }

    [Fact]
    public void A_short_writable_part_gets_what_fits_and_the_used_length_is_the_bytes_written()
    {
        var header = AdminQueueClient.Header((ushort)AdminOpcode.ListQuery, SrIov, 0);
        ushort head = _owner.Admin.Post(header, 12, [24], [12]);
        _owner.Admin.Queue.Notify();
        var r = _owner.Admin.Complete(head);
        AssertStatus(r, AdminStatus.Ok, AdminQualifier.Ok);
        Assert.Equal(12u, r.UsedLength);

        head = _owner.Admin.Post(header, 200, [24], [200]);
        _owner.Admin.Queue.Notify();
        Assert.Equal(24u, _owner.Admin.Complete(head).UsedLength); // only the defined structure: status + two le64 words (opcodes up to 0x42)
    }

    [Fact]
    public void The_container_is_gathered_and_scattered_across_descriptors_of_any_size()
    {
        var readable = AdminQueueClient.Header((ushort)AdminOpcode.ListUse, SrIov, 0).Concat(Bitmap(AdminOpcode.ListQuery, AdminOpcode.ListUse)).ToArray();
        ushort head = _owner.Admin.Post(readable, 8, [1, 5, 13, 7, 3, 3], [1, 2, 5]);
        _owner.Admin.Queue.Notify();
        var r = _owner.Admin.Complete(head);
        AssertStatus(r, AdminStatus.Ok, AdminQualifier.Ok);
        Assert.Equal(8u, r.UsedLength);
    }

    [Fact]
    public void A_long_owner_driver_session_reuses_its_command_buffers_and_never_runs_out_of_ram()
    {
        // 6000 commands with 4 KiB of data each: more than the driver's 16 MiB if buffers leaked.
        var data = new byte[4000];
        for (int i = 0; i < 6000; i++)
            AssertStatus(Run(AdminOpcode.ListQuery, data: data, result: 16), AdminStatus.Ok, AdminQualifier.Ok);
    }

    [Fact]
    public void Commands_on_one_admin_queue_complete_in_queue_order()
    {
        var heads = new List<(ushort Head, AdminQualifier Expected)>();
        for (int i = 0; i < 12; i++)
        {
            bool bad = i % 3 == 1;
            var h = AdminQueueClient.Header(bad ? (ushort)0x777 : (ushort)AdminOpcode.ListQuery, SrIov, 0);
            heads.Add((_owner.Admin.Post(h, 16, [24], [16]), bad ? AdminQualifier.InvalidOpcode : AdminQualifier.Ok));
        }
        _owner.Admin.Queue.Notify();
        foreach (var (head, expected) in heads)
            Assert.Equal((ushort)expected, _owner.Admin.Complete(head).Qualifier); // Complete checks the order
    }

    [Fact]
    public void The_owner_still_switches_frames_as_a_port_of_the_group()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        vf1.PostRx(2);
        var rx = _owner.Session.Queues[0];
        ulong buf = _owner.Session.Ram.Allocate(2048);
        rx.AddChain(new VhostUserVirtio.FrontEnd.BufferSpec[] { new(buf, 2048, true) });
        rx.Notify();
        vf1.Send(NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", vf1.Mac, "hello owner"));
        Assert.True(rx.WaitUsed().Length > 12);
    }
}
