using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>SR-IOV VF Enable through the owner's num_vfs (docs/owner-binding.md).</summary>
[Trait("tier", "unit")]
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
