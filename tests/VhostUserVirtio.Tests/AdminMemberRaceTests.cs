using Microsoft.Extensions.Logging.Abstractions;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Group.Legacy;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The admin processor runs on the data path while the control loop may disable the VFs: a member it
/// validated can be gone by the time the command reaches it. Here the group says two VFs exist but
/// has no member behind the id any more (what a VF Disable between the two looks like), and the
/// command must still complete, with the member status, never an exception that leaves it popped
/// and unanswered.
/// </summary>
[Trait("tier", "unit")]
public sealed class AdminMemberRaceTests : IDisposable
{
    private sealed class VanishingMembers : IAdminGroupState
    {
        public int NumVfs => 2;
        public NetDevice? NetDeviceOf(ulong id) => null;
        public bool MemberActive(ulong id) => false;
        public MsixPool Msix { get; } = new(2);
        public LegacyNetInterface? LegacyOf(ulong id) => null;
        public Group.GroupMember? MemberOf(ulong id) => null;
    }

    private readonly GuestRam _ram = new(1 << 20);
    private readonly GuestMemoryTable _table = new();
    private readonly DriverQueue _driver;
    private readonly SplitQueue _device = new(16);
    private readonly AdminQueueClient _client;
    private readonly AdminCommandProcessor _processor = new(new VanishingMembers(), NullLogger.Instance);

    public AdminMemberRaceTests()
    {
        _driver = new DriverQueue(_ram, 0, 16);
        var r = _ram.Regions[0];
        _table.Replace([(r.Gpa, r.Size, r.UserAddress, r.MmapOffset)], [r.Fd.Duplicate()]);
        Assert.Null(_device.Configure(_table.Current, 16, _driver.DescriptorTable, _driver.AvailableRing, _driver.UsedRing));
        _client = new AdminQueueClient(_ram, _driver);
        // What a PF driver does first: use every command the SR-IOV group supports.
        var supported = new byte[_processor.SrIovSupported.WireLength];
        _processor.SrIovSupported.Write(supported);
        Assert.True(Run(AdminOpcode.ListUse, supported, 0).Ok);
    }

    public void Dispose()
    {
        _driver.Dispose();
        _table.Dispose();
        _ram.Dispose();
    }

    private AdminReply Run(AdminOpcode opcode, byte[] data, int result)
    {
        ushort head = _client.Post((ushort)opcode, (ushort)AdminGroupType.SrIov, 1, data, result);
        var chain = _device.Pop() ?? throw new InvalidOperationException("no command popped");
        _device.PushUsed(chain.Head, _processor.Handle(chain));
        return _client.Complete(head);
    }

    [Theory]
    [InlineData(AdminOpcode.LegacyCommonCfgRead, new byte[] { 0 }, 4)]
    [InlineData(AdminOpcode.LegacyDevCfgRead, new byte[] { 0 }, 6)]
    [InlineData(AdminOpcode.LegacyCommonCfgWrite, new byte[] { 14, 0, 0, 0, 0, 0, 0, 0, 1, 0 }, 0)]
    [InlineData(AdminOpcode.LegacyDevCfgWrite, new byte[] { 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1 }, 0)]
    public void A_legacy_command_for_a_vf_that_vanished_after_validation_completes_with_invalid_member(AdminOpcode opcode, byte[] data, int result)
    {
        var reply = Run(opcode, data, result);
        Assert.Equal((ushort)AdminStatus.Einval, reply.Status);
        Assert.Equal((ushort)AdminQualifier.InvalidMember, reply.Qualifier);
    }
}
