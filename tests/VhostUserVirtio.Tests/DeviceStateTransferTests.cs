using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A VF's state moves between two back ends through the front end, as a VMM with
/// VHOST_USER_PROTOCOL_F_DEVICE_STATE does it: rings stopped, SET_DEVICE_STATE_FD with a pipe, the
/// state read to its end (save) or written and closed (load), then CHECK_DEVICE_STATE. The bytes are
/// the VF's device parts, the same stream the owner's DEV_PARTS_GET returns.
/// </summary>
[Trait("tier", "unit")]
public sealed class DeviceStateTransferTests : IDisposable
{
    private readonly GroupBackend _source = new(vfs: 1);
    private readonly GroupBackend _target = new(vfs: 1);

    public void Dispose()
    {
        _source.Dispose();
        _target.Dispose();
    }

    /// <summary>Stops every ring the way QEMU does before a state transfer: GET_VRING_BASE each.</summary>
    private static void StopRings(NetFrontEnd fe)
    {
        for (uint i = 0; i < fe.Session.Queues.Length; i++)
        {
            var p = new byte[VringState.Size];
            new VringState(i, 0).Write(p);
            fe.Session.Connection.Request(FrontendRequest.GetVringBase, p, hasReplyBody: true);
        }
    }

    private static byte[] Save(NetFrontEnd fe)
    {
        var (read, write) = PeerStream.CreatePipe();
        using (read)
        {
            using (write)
                Assert.Equal(DeviceStateTransfer.NoFdReturned, fe.Session.Connection.SetDeviceStateFd(DeviceStateTransfer.Save, write.Number));
            using var stream = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(read.DangerousGetHandle(), ownsHandle: false), FileAccess.Read);
            var state = new MemoryStream();
            stream.CopyTo(state);
            return state.ToArray();
        }
    }

    private static ulong Load(NetFrontEnd fe, byte[] state)
    {
        var (read, write) = PeerStream.CreatePipe();
        using (read)
            Assert.Equal(DeviceStateTransfer.NoFdReturned, fe.Session.Connection.SetDeviceStateFd(DeviceStateTransfer.Load, read.Number));
        using (write)
        using (var stream = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(write.DangerousGetHandle(), ownsHandle: false), FileAccess.Write))
            stream.Write(state);
        return fe.Session.Connection.CheckDeviceState();
    }

    [Fact]
    public void A_vfs_state_saved_from_one_back_end_and_loaded_into_another_is_what_the_other_then_holds()
    {
        using (var owner = OwnerDriver.Connect(_source.Socket(0)))
        {
            owner.UseAllCommands();
            Assert.True(owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, (ushort)AdminGroupType.SrIov, 1, [0x80, 0, 0, 0, 0, 0, 0, 0, 1], 0).Ok);
            Assert.True(owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, (ushort)AdminGroupType.SrIov, 1, [0x81, 0, 0, 0, 0, 0, 0, 0, 0], 0).Ok);
        }
        using var from = new NetFrontEnd(_source.Socket(1));
        Assert.True((from.Session.Connection.Negotiated & ProtocolFeatures.DeviceState) != 0, "DEVICE_STATE was not offered");
        StopRings(from);
        var state = Save(from);
        Assert.NotEmpty(state);
        Assert.Equal(0UL, from.Session.Connection.CheckDeviceState());

        using var to = new NetFrontEnd(_target.Socket(1));
        StopRings(to);
        Assert.True(_target.Member(1).Device.LinkUp);
        Assert.Equal(0UL, Load(to, state));
        Assert.False(_target.Member(1).Device.LinkUp);
        Assert.True(_target.Member(1).Device.Trusted);
    }

    [Fact]
    public void A_transfer_is_refused_while_rings_run_and_a_truncated_state_fails_the_check_and_changes_nothing()
    {
        using var from = new NetFrontEnd(_source.Socket(1));
        var (read, write) = PeerStream.CreatePipe();
        using (read)
        using (write)
            Assert.NotEqual(0UL, from.Session.Connection.SetDeviceStateFd(DeviceStateTransfer.Save, write.Number) & 0xff);
        Assert.NotEqual(0UL, from.Session.Connection.CheckDeviceState()); // nothing was started
        StopRings(from);
        var state = Save(from);
        Assert.Equal(0UL, from.Session.Connection.CheckDeviceState());

        using var to = new NetFrontEnd(_target.Socket(1));
        StopRings(to);
        Assert.NotEqual(0UL, Load(to, state[..^7]));
        Assert.True(_target.Member(1).Device.LinkUp);
        Assert.False(_target.Member(1).Device.Trusted);
        Assert.Equal(0UL, Load(to, state)); // the whole stream still loads afterwards
    }

    [Fact]
    public void An_empty_regular_file_as_the_state_source_ends_at_once_and_fails_the_check_without_harm()
    {
        using var to = new NetFrontEnd(_target.Socket(1));
        StopRings(to);
        string path = Path.Combine(_target.Directory, "not-a-pipe");
        using (var file = File.Create(path))
            to.Session.Connection.SetDeviceStateFd(DeviceStateTransfer.Load, (int)file.SafeFileHandle.DangerousGetHandle());
        Assert.NotEqual(0UL, to.Session.Connection.CheckDeviceState()); // an empty state is not a state
        Assert.True(_target.Member(1).Device.LinkUp);
        Assert.NotEqual(0UL, to.Session.Connection.GetFeatures());
    }
}
