using System.Buffers.Binary;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The device parts commands over the owner's admin queue, in the order Linux's virtio-vfio-pci sends
/// them (virtio-admin.md §9.4): capabilities on the self group, a GET object, METADATA SIZE and GET ALL
/// while the source VF runs and again once stopped, then on the destination VF a stop, a SET object,
/// DEV_PARTS_SET with the source's blob unchanged, and a resume. Stopped means stopped in the data
/// path: nothing delivered, no ring touched, and what the driver made available meanwhile is taken
/// after the resume.
/// </summary>
[Trait("tier", "unit")]
public sealed class DevicePartsAdminTests() : OwnerTest(useAllCommands: true)
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov, Self = (ushort)AdminGroupType.Self;

    private AdminReply Run(AdminOpcode op, ushort group, ulong member, byte[] data, int result = 64) =>
        _owner.Admin.Execute((ushort)op, group, member, data, result);

    private static void AssertOk(AdminReply r) => Assert.True(r.Ok, r.Describe());

    private static void AssertStatus(AdminReply r, AdminStatus status) => Assert.True(r.Status == (ushort)status, r.Describe());

    private static byte[] Header(uint id) => [0, 0, 0, 0, (byte)id, (byte)(id >> 8), (byte)(id >> 16), (byte)(id >> 24)];

    private static byte[] CreateData(uint id, byte kind) => [.. Header(id), 0, 0, 0, 0, 0, 0, 0, 0, kind, 0, 0, 0, 0, 0, 0, 0];

    private static byte[] Typed(uint id, byte type) => [.. Header(id), type, 0, 0, 0, 0, 0, 0, 0];

    private void SetLimits(byte get, byte set) =>
        AssertOk(Run(AdminOpcode.DriverCapSet, Self, 0, [0, 0, 0, 0, 0, 0, 0, 0, get, set]));

    private static string VfMac(int vf) => $"02:56:56:00:00:{vf:x2}";

    private byte[] GetAll(ulong member, uint id, int room)
    {
        var r = Run(AdminOpcode.DevPartsGet, SrIov, member, Typed(id, 1), room);
        AssertOk(r);
        return r.Result;
    }

    [Fact]
    public void Capabilities_are_self_group_commands_and_the_parts_commands_are_listed_for_the_vfs()
    {
        var self = Run(AdminOpcode.ListQuery, Self, 0, [], 16);
        AssertOk(self);
        Assert.Equal(0b11_1000_0011UL, BinaryPrimitives.ReadUInt64LittleEndian(self.Result) & 0x3ff);
        var sriov = Run(AdminOpcode.ListQuery, SrIov, 0, [], 16);
        AssertOk(sriov);
        Assert.Equal(0x3fc00UL, BinaryPrimitives.ReadUInt64LittleEndian(sriov.Result) & 0x3fc00); // 0xa..0x11

        var cap = Run(AdminOpcode.DeviceCapGet, Self, 0, [0, 0, 0, 0, 0, 0, 0, 0]);
        AssertOk(cap);
        Assert.True(cap.Result[0] > 0 && cap.Result[1] > 0, "no device parts objects offered");
        // Linux 6.13 sent the capability commands with the SR-IOV group: the spec says EINVAL.
        AssertStatus(Run(AdminOpcode.DeviceCapGet, SrIov, 1, [0, 0, 0, 0, 0, 0, 0, 0]), AdminStatus.Einval);
    }

    [Fact]
    public void A_vfs_state_moves_to_another_vf_through_get_all_and_set_as_linux_sends_them()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        // The source's state differs from the defaults: link down, trust on, fewer MSI-X vectors.
        AssertOk(Run(AdminOpcode.NetMemberCtrl, SrIov, 1, [0x80, 0, 0, 0, 0, 0, 0, 0, 1], 0));
        AssertOk(Run(AdminOpcode.NetMemberCtrl, SrIov, 1, [0x81, 0, 0, 0, 0, 0, 0, 0, 0], 0));
        SetLimits(get: 2, set: 2);

        // Source: GET object, size, GET ALL while running, stop, GET ALL again, destroy.
        AssertOk(Run(AdminOpcode.ResourceObjCreate, SrIov, 1, CreateData(0, 0), 0));
        var size = Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 0), 8);
        AssertOk(size);
        int max = (int)BinaryPrimitives.ReadUInt32LittleEndian(size.Result);
        Assert.True(max > 0);
        var running = GetAll(1, 0, max);
        AssertOk(Run(AdminOpcode.DevModeSet, SrIov, 1, [1], 0));
        AssertOk(Run(AdminOpcode.DevModeSet, SrIov, 1, [1], 0)); // stopping a stopped member succeeds
        var blob = GetAll(1, 0, max);
        Assert.True(blob.Length > 0 && blob.Length <= max, $"{blob.Length} bytes against a size of {max}");
        Assert.Equal(running.Length, blob.Length);
        var count = Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 1), 8);
        AssertOk(count);
        var list = Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 2), 8 + 16 * 64);
        AssertOk(list);
        Assert.Equal(BinaryPrimitives.ReadUInt32LittleEndian(count.Result), BinaryPrimitives.ReadUInt32LittleEndian(list.Result));
        AssertOk(Run(AdminOpcode.ResourceObjDestroy, SrIov, 1, Header(0), 0));

        // Destination: stop, SET object, the blob unchanged, destroy, resume.
        AssertOk(Run(AdminOpcode.DevModeSet, SrIov, 2, [1], 0));
        AssertOk(Run(AdminOpcode.ResourceObjCreate, SrIov, 2, CreateData(1, 1), 0));
        AssertOk(Run(AdminOpcode.DevPartsSet, SrIov, 2, [.. Header(1), .. blob], 0));
        AssertOk(Run(AdminOpcode.ResourceObjDestroy, SrIov, 2, Header(1), 0));
        AssertOk(Run(AdminOpcode.DevModeSet, SrIov, 2, [0], 0));

        var vf2Device = _backend.Member(2).Device;
        Assert.False(vf2Device.LinkUp);
        Assert.True(vf2Device.Trusted);
        // And the destination's own parts now read as the source's did (the counters part aside).
        AssertOk(Run(AdminOpcode.ResourceObjCreate, SrIov, 2, CreateData(0, 0), 0));
        var back = GetAll(2, 0, max);
        Assert.Equal(blob.Length, back.Length);
        AssertOk(Run(AdminOpcode.DevModeSet, SrIov, 1, [0], 0));
    }

    [Fact]
    public void Set_is_refused_while_the_member_runs_and_a_truncated_stream_changes_nothing()
    {
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        SetLimits(get: 1, set: 1);
        AssertOk(Run(AdminOpcode.ResourceObjCreate, SrIov, 1, CreateData(0, 0), 0));
        var blob = GetAll(1, 0, 4096);
        AssertOk(Run(AdminOpcode.ResourceObjCreate, SrIov, 2, CreateData(1, 1), 0));
        AssertStatus(Run(AdminOpcode.DevPartsSet, SrIov, 2, [.. Header(1), .. blob], 0), AdminStatus.Ebusy);
        AssertOk(Run(AdminOpcode.NetMemberCtrl, SrIov, 2, [0x81, 0, 0, 0, 0, 0, 0, 0, 0], 0)); // link down on VF2
        AssertOk(Run(AdminOpcode.DevModeSet, SrIov, 2, [1], 0));
        AssertStatus(Run(AdminOpcode.DevPartsSet, SrIov, 2, [.. Header(1), .. blob[..^5]], 0), AdminStatus.Einval);
        Assert.False(_backend.Member(2).Device.LinkUp); // unchanged by the refused SET
        // A GET object cannot set, a SET object cannot get, and a missing object is ENXIO.
        AssertStatus(Run(AdminOpcode.DevPartsSet, SrIov, 2, [.. Header(0), .. blob], 0), AdminStatus.Einval);
        AssertStatus(Run(AdminOpcode.DevPartsGet, SrIov, 2, Typed(1, 1), 4096), AdminStatus.Einval);
        AssertStatus(Run(AdminOpcode.DevPartsGet, SrIov, 1, Typed(7, 1), 4096), AdminStatus.Enxio);
        // A result room too small for the parts is ENOMEM, not a truncated stream.
        AssertStatus(Run(AdminOpcode.DevPartsGet, SrIov, 1, Typed(0, 1), 16), AdminStatus.Enomem);
        AssertOk(Run(AdminOpcode.DevModeSet, SrIov, 2, [0], 0));
    }

    [Fact]
    public void A_stopped_vf_takes_nothing_from_its_rings_and_what_arrived_meanwhile_is_taken_after_the_resume()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf1.PostRx(4);
        vf2.PostRx(4);
        AssertOk(Run(AdminOpcode.DevModeSet, SrIov, 2, [1], 0));

        // Delivered to a stopped VF: nothing lands in its receive ring.
        vf1.Send(NetFrontEnd.Frame(VfMac(2), VfMac(1), "while vf2 is stopped"));
        Assert.True(vf2.NothingWithin(300), "a stopped VF's receive ring was written");

        // Sent by a stopped VF: the kick waits, the chain is not taken, no used entry appears.
        var frame = NetFrontEnd.Frame(VfMac(1), VfMac(2), "queued while stopped");
        ulong a = vf2.Session.Ram.Allocate((ulong)(NetFrontEnd.HeaderSize + frame.Length), 64);
        frame.CopyTo(vf2.Session.Ram.Span(a + NetFrontEnd.HeaderSize, frame.Length));
        vf2.Session.Ram.Span(a, NetFrontEnd.HeaderSize).Clear();
        ushort usedBefore = vf2.Tx.UsedIndex;
        vf2.Tx.AddChain([new FrontEnd.BufferSpec(a, (uint)(NetFrontEnd.HeaderSize + frame.Length), false)]);
        vf2.Tx.Notify();
        Thread.Sleep(300);
        Assert.Equal(usedBefore, vf2.Tx.UsedIndex);

        // Resumed: the pending chain is taken and reaches VF1, none lost.
        AssertOk(Run(AdminOpcode.DevModeSet, SrIov, 2, [0], 0));
        vf2.Tx.WaitUsed();
        Assert.Equal(frame, vf1.Receive().Frame);
    }

    [Fact]
    public void Objects_outlive_a_vfs_reset_and_a_refused_mode_change_changes_nothing()
    {
        SetLimits(get: 1, set: 1);
        AssertOk(Run(AdminOpcode.ResourceObjCreate, SrIov, 1, CreateData(0, 0), 0));
        using (new NetFrontEnd(_backend.Socket(1)))
        {
        }
        // The VF's front end came and went (a member reset): the owner's object is still there.
        Assert.True(SpinWait.SpinUntil(() => !_backend.Member(1).Endpoint.IsConnected, TimeSpan.FromSeconds(10)));
        AssertStatus(Run(AdminOpcode.ResourceObjCreate, SrIov, 1, CreateData(0, 0), 0), AdminStatus.Eexist);
        AssertOk(Run(AdminOpcode.DevPartsGet, SrIov, 1, Typed(0, 1), 4096));
        AssertStatus(Run(AdminOpcode.DevModeSet, SrIov, 1, [0b11], 0), AdminStatus.Einval);
        Assert.False(_backend.Member(1).Endpoint.Backend.MemberStopped);
        // Resuming a running member succeeds.
        AssertOk(Run(AdminOpcode.DevModeSet, SrIov, 1, [0], 0));
    }
}
