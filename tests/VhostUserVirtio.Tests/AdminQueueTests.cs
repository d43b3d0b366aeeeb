using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>A device group with two VFs and the owner driver connected to its PF (optionally with every command in use).</summary>
public abstract class OwnerTest : IDisposable
{
    protected readonly GroupBackend _backend = new(vfs: 2);
    protected OwnerDriver _owner; // a test may reconnect as a new owner driver

    protected OwnerTest(bool useAllCommands)
    {
        try
        {
            _owner = OwnerDriver.Connect(_backend.Socket(0));
            if (useAllCommands)
                _owner.UseAllCommands();
        }
        catch
        {
            _owner?.Dispose();
            _backend.Dispose(); // xunit does not dispose a test class whose constructor failed
            throw;
        }
    }

    public void Dispose()
    {
        _owner.Dispose();
        _backend.Dispose();
        GC.SuppressFinalize(this);
    }
}

/// <summary>
/// The owner's admin virtqueue over vhost-user, driven by the owner-driver library. Test names
/// follow the device-side normative statements of VIRTIO 1.4 "Administration Commands".
/// </summary>
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

/// <summary>SR-IOV VF Enable through the owner's num_vfs (docs/owner-binding.md).</summary>
public sealed class SrIovEnableTests() : OwnerTest(useAllCommands: false)
{

    private void SetNumVfs(ushort n) =>
        _owner.Session.Connection.SetConfig(OwnerInformation.Offset + OwnerInformation.NumVfs, BitConverter.GetBytes(n));

    private ushort NumVfs => OwnerInfo.Read(_owner.Session.Connection.GetConfig(OwnerInformation.Offset, OwnerInformation.Size)).NumVfs;

    [Fact]
    public void Disabling_vfs_disconnects_their_front_ends_removes_their_sockets_and_fails_sriov_commands()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        SetNumVfs(0);
        Assert.Equal(0, NumVfs);
        Assert.True(vf1.Session.Connection.WaitForClose(10_000), "the VF's front end was not disconnected");
        Assert.False(File.Exists(_backend.Socket(1)));
        Assert.False(File.Exists(_backend.Socket(2)));
        var r = _owner.Admin.Execute(0, 1, 0, default, 8);
        Assert.Equal(((ushort)22, (ushort)4), (r.Status, r.Qualifier)); // EINVAL / Q_INVALID_GROUP
    }

    [Fact]
    public void Re_enabling_vfs_gives_fresh_members_that_switch_again()
    {
        SetNumVfs(0);
        SetNumVfs(2);
        Assert.Equal(2, NumVfs);
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        NetCheck.AssertSwitches(vf1, vf2);
        Assert.Equal(0, _backend.Group.Members[0].Device.Counters.RxPackets); // fresh counters
        Assert.True(_owner.Admin.Execute(0, 1, 0, default, 8).Ok);
    }

    [Fact]
    public void Changing_between_two_non_zero_counts_or_beyond_total_vfs_is_refused()
    {
        Assert.Throws<VhostUserVirtio.FrontEnd.FrontEndException>(() => SetNumVfs(1));
        Assert.Equal(2, NumVfs);
        SetNumVfs(0);
        Assert.Throws<VhostUserVirtio.FrontEnd.FrontEndException>(() => SetNumVfs(3));
        Assert.Equal(0, NumVfs);
        Assert.True(_backend.Logs.WaitForWarning("outside 0..2"));
    }
}

/// <summary>NET_MEMBER_CTRL (0x42): the owner sets a member's MAC, receive mode, link and trust.</summary>
public sealed class NetMemberCtrlTests() : OwnerTest(useAllCommands: true)
{
    [Fact]
    public void Net_member_ctrl_is_refused_until_the_driver_puts_it_in_use()
    {
        using var backend = new GroupBackend(vfs: 1);
        using var owner = OwnerDriver.Connect(backend.Socket(0));
        var r = owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, 1, 1, new byte[] { NetMemberControl.LinkClass, 0, 0, 0, 0, 0, 0, 0, 0 }, 0);
        Assert.Equal(((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidOpcode), (r.Status, r.Qualifier));
        Assert.True(backend.Member(1).Device.LinkUp);
        owner.UseAllCommands();
        Assert.True(owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, 1, 1, new byte[] { NetMemberControl.LinkClass, 0, 0, 0, 0, 0, 0, 0, 0 }, 0).Ok);
        Assert.False(backend.Member(1).Device.LinkUp);
    }

    private AdminReply Ctrl(ulong member, byte cls, byte command, params byte[] data) =>
        _owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, 1, member, new byte[] { cls, command, 0, 0, 0, 0, 0, 0 }.Concat(data).ToArray(), 0);

    [Fact]
    public void Setting_a_vf_mac_is_seen_in_its_config_space_and_used_by_its_receive_filter()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        var mac = new byte[6];
        Mac.Parse("52:54:00:aa:bb:01").Write(mac);
        Assert.True(Ctrl(1, VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet, mac).Ok);
        Assert.Equal("52:54:00:aa:bb:01", Mac.Read(vf1.Session.Connection.GetConfig(0, 6)!).ToString());

        Assert.True(Ctrl(1, VirtioNet.CtrlRx, VirtioNet.CtrlRxPromisc, 0).Ok);
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf1.PostRx(4);
        vf2.Send(NetFrontEnd.Frame("52:54:00:00:00:99", vf2.Mac, "not vf1's"));
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.Filtered) == 1));
        var mine = NetFrontEnd.Frame("52:54:00:aa:bb:01", vf2.Mac, "vf1's");
        vf2.Send(mine);
        Assert.Equal(mine, vf1.Receive().Frame);
    }

    [Fact]
    public void Link_down_stops_a_vfs_traffic_and_shows_in_its_status_until_link_up()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        Assert.True(Ctrl(1, NetMemberControl.LinkClass, 0, 0).Ok);
        Assert.Equal(0, BinaryPrimitives.ReadUInt16LittleEndian(vf1.Session.Connection.GetConfig(6, 2)));
        vf1.PostRx(4);
        vf2.Send(NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", vf2.Mac, "link is down"));
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.LinkDown) == 1));

        Assert.True(Ctrl(1, NetMemberControl.LinkClass, 0, 1).Ok);
        NetCheck.AssertSwitches(vf2, vf1);
    }

    [Fact]
    public void An_untrusted_vf_cannot_change_its_own_mac_but_the_owner_still_can()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), controlQueue: true);
        var mac = new byte[6];
        Mac.Parse("52:54:00:aa:bb:02").Write(mac);
        Assert.True(Ctrl(1, NetMemberControl.TrustClass, 0, 0).Ok);
        Assert.Equal(VirtioNet.Err, vf1.ControlCommand(VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet, mac));
        Assert.True(Ctrl(1, VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet, mac).Ok);
        Assert.True(Ctrl(1, NetMemberControl.TrustClass, 0, 1).Ok);
        Mac.Parse("52:54:00:aa:bb:03").Write(mac);
        Assert.Equal(VirtioNet.Ok, vf1.ControlCommand(VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet, mac));
    }

    [Fact]
    public void Bad_members_and_bad_commands_fail_without_side_effects()
    {
        var r = Ctrl(3, NetMemberControl.LinkClass, 0, 0);
        Assert.Equal(((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidMember), (r.Status, r.Qualifier));
        r = Ctrl(1, NetMemberControl.LinkClass, 0, 7);
        Assert.Equal(((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidField), (r.Status, r.Qualifier));
        r = _owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, 1, 1, new byte[3], 0); // shorter than its header
        Assert.Equal((ushort)AdminQualifier.InvalidField, r.Qualifier);
        Assert.True(_backend.Member(1).Device.LinkUp);
        Assert.True(Ctrl(0, NetMemberControl.LinkClass, 0, 1).Ok); // member 0 is the owner itself
    }
}

/// <summary>MEMBER_RESOURCE / MEMBER_RESOURCE_ATTRS (0x40/0x41): MSI-X vectors per VF.</summary>
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
