using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// VF Disable while admin commands for the VFs sit in the admin queue (docs/owner-binding.md: "commands
/// queued after the change see the new set"): exactly the commands that need the SR-IOV group fail,
/// the others complete, and nothing done before is undone.
/// </summary>
[Trait("tier", "unit")]
public sealed class AdminQueuedDisableTests() : OwnerTest(useAllCommands: true)
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov, Self = (ushort)AdminGroupType.Self;

    private ushort Post(AdminOpcode op, ushort group, ulong member, byte[] data, int result) =>
        _owner.Admin.Post((ushort)op, group, member, data, result);

    private static byte[] Query => [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];      // MEMBER_RESOURCE query MSI-X
    private static byte[] LinkDown => [0x81, 0, 0, 0, 0, 0, 0, 0, 0];                       // NET_MEMBER_CTRL link 0

    private void SetNumVfs(ushort n) => _owner.Session.Connection.SetConfig(OwnerInformation.Offset + OwnerInformation.NumVfs, BitConverter.GetBytes(n));

    [Fact]
    public async Task Disabling_vfs_fails_exactly_the_queued_commands_that_target_them_and_nothing_else()
    {
        // Done before the change: VF2's link goes down, and stays down until VF2 itself goes away.
        Assert.True(_owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, SrIov, 2, LinkDown, 0).Ok);
        var vf2Device = _backend.Member(2).Device;
        Assert.False(vf2Device.LinkUp);

        // Hold the worker that processes the admin queue, so the next commands stay queued.
        var loop = _backend.Group.DataPath.Loop;
        using var gate = new ManualResetEventSlim();
        using var holding = new ManualResetEventSlim();
        loop.Post(() => { holding.Set(); gate.Wait(TimeSpan.FromSeconds(60)); });
        Task? disable = null;
        var heads = new List<(ushort Head, bool NeedsVfs, string What)>();
        try
        {
            Assert.True(holding.Wait(TimeSpan.FromSeconds(10)));
            ushort usedBefore = _owner.Admin.Queue.UsedIndex;
            heads.Add((Post(AdminOpcode.MemberResource, SrIov, 1, Query, 16), true, "VF1 MEMBER_RESOURCE"));
            heads.Add((Post(AdminOpcode.ListQuery, Self, 0, [], 16), false, "self LIST_QUERY"));
            heads.Add((Post(AdminOpcode.NetMemberCtrl, SrIov, 2, LinkDown, 0), true, "VF2 NET_MEMBER_CTRL"));
            heads.Add((Post(AdminOpcode.LegacyCommonCfgRead, SrIov, 1, [0], 4), true, "VF1 LEGACY_COMMON_CFG_READ"));
            heads.Add((Post(AdminOpcode.ListQuery, Self, 0, [], 8), false, "self LIST_QUERY (short)"));
            heads.Add((Post(AdminOpcode.ListQuery, SrIov, 0, [], 8), true, "SR-IOV LIST_QUERY"));
            _owner.Admin.Queue.Notify();

            // VF Disable arrives on the owner's socket while they wait; the control loop applies it.
            disable = Task.Run(() => SetNumVfs(0));
            Assert.True(SpinWait.SpinUntil(() => _backend.Group.NumVfs == 0, TimeSpan.FromSeconds(10)), "VF Disable was not applied");
            Assert.Equal(usedBefore, _owner.Admin.Queue.UsedIndex); // really queued: nothing completed yet
        }
        finally
        {
            gate.Set();
        }

        foreach (var (head, needsVfs, what) in heads)
        {
            var r = _owner.Admin.Complete(head);
            if (needsVfs)
                Assert.True((r.Status, r.Qualifier) == ((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidGroup),
                    $"{what}: expected EINVAL/INVALID_GROUP, got {r.Describe()}");
            else
                Assert.True(r.Ok, $"{what}: {r.Describe()}");
        }
        await disable!.WaitAsync(TimeSpan.FromSeconds(30)); // VF Disable completes (and was acked)
        Assert.False(File.Exists(_backend.Socket(1)));

        // Re-enabling gives fresh members: VF commands work again, on a VF2 whose link is up.
        SetNumVfs(2);
        Assert.True(_owner.Admin.Execute((ushort)AdminOpcode.MemberResource, SrIov, 1, Query, 16).Ok);
        Assert.True(_backend.Member(2).Device.LinkUp);
        NetCheck.AssertDeviceUp(_backend.Socket(2));
    }
}
