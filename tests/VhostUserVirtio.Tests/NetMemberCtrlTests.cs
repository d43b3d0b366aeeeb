using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>NET_MEMBER_CTRL (0x42): the owner sets a member's MAC, receive mode, link and trust.</summary>
[Trait("tier", "unit")]
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
