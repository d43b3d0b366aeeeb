using System.Buffers.Binary;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Group.Migration;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The seed admin profile (docs/owner-binding.md "Admin command profiles"): seed 003's DEV_MODE_GET/SET
/// and DEV_CTX_* at 0x7–0xd for the VFs, over the same device parts stream as the spec profile, driven
/// through the owner's admin queue by the owner driver library.
/// </summary>
[Trait("tier", "unit")]
public sealed class SeedProfileTests : IDisposable
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov, Self = (ushort)AdminGroupType.Self;
    private const byte Active = 0, Stop = 1, Freeze = 2;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(20);

    private readonly GroupBackend _backend = new(vfs: 2, configure: o => o with { AdminProfile = AdminProfile.Seed });
    private readonly OwnerDriver _owner;

    public SeedProfileTests()
    {
        try
        {
            _owner = OwnerDriver.Connect(_backend.Socket(0));
            _owner.UseAllCommands();
        }
        catch
        {
            _owner?.Dispose();
            _backend.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        _owner.Dispose();
        _backend.Dispose();
    }

    private AdminReply Run(ushort op, ulong member, byte[]? data = null, int result = 64, ushort group = SrIov) =>
        _owner.Admin.Execute(op, group, member, data ?? [], result);

    private static void AssertOk(AdminReply r) => Assert.True(r.Ok, r.Describe());

    private static void AssertStatus(AdminReply r, AdminStatus status, AdminQualifier qualifier) =>
        Assert.True(r.Status == (ushort)status && r.Qualifier == (ushort)qualifier, r.Describe());

    private byte Mode(ulong member)
    {
        var r = Run(SeedOpcode.DevModeGet, member, result: 8);
        AssertOk(r);
        return r.Result[0];
    }

    private void SetMode(ulong member, byte mode) => AssertOk(Run(SeedOpcode.DevModeSet, member, [mode], 0));

    private ulong Size(ulong member, byte freezeMode = 0)
    {
        var r = Run(SeedOpcode.DevCtxSizeGet, member, [freezeMode], 8);
        AssertOk(r);
        return BinaryPrimitives.ReadUInt64LittleEndian(r.Result);
    }

    /// <summary>One DEV_CTX_READ with room for <paramref name="chunk"/> data bytes: the data returned.</summary>
    private byte[] ReadChunk(ulong member, int chunk)
    {
        var r = Run(SeedOpcode.DevCtxRead, member, result: 4 + chunk);
        AssertOk(r);
        int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(r.Result);
        Assert.True(length <= chunk && r.Result.Length == 4 + length, r.Describe());
        return r.Result[4..];
    }

    /// <summary>Reads the whole context, chunk by chunk, up to the 0 length that ends it.</summary>
    private byte[] ReadContext(ulong member, int chunk = 4000)
    {
        var all = new List<byte>();
        for (int i = 0; i < 10_000; i++)
        {
            var data = ReadChunk(member, chunk);
            if (data.Length == 0)
                return [.. all];
            all.AddRange(data);
        }
        throw new InvalidOperationException("the context stream never ended");
    }

    private void WriteContext(ulong member, byte[] context, int chunk = 100)
    {
        for (int at = 0; at < context.Length; at += chunk)
            AssertOk(Run(SeedOpcode.DevCtxWrite, member, context[at..Math.Min(context.Length, at + chunk)], 0));
    }

    private static byte[] Control(byte cls, byte value) => [cls, 0, 0, 0, 0, 0, 0, 0, value];

    [Fact]
    public void Modes_round_trip_through_dev_mode_set_and_get_and_stop_pauses_the_vf()
    {
        var backend = _backend.Member(1).Endpoint.Backend;
        Assert.Equal(Active, Mode(1));
        SetMode(1, Stop);
        Assert.Equal(Stop, Mode(1));
        Assert.True(backend.MemberStopped);
        SetMode(1, Freeze);
        Assert.Equal(Freeze, Mode(1));
        Assert.True(backend.MemberStopped);
        SetMode(1, Freeze); // setting the current mode succeeds
        Assert.Equal(Active, Mode(2)); // the other VF is untouched
        SetMode(1, Active);
        Assert.Equal(Active, Mode(1));
        Assert.False(backend.MemberStopped);
        AssertStatus(Run(SeedOpcode.DevModeSet, 1, [3], 0), AdminStatus.Einval, AdminQualifier.InvalidField);
        Assert.Equal(Active, Mode(1));
        AssertStatus(Run(SeedOpcode.DevModeGet, 3, result: 8), AdminStatus.Einval, AdminQualifier.InvalidMember);
    }

    [Fact]
    public void A_context_read_in_chunks_equals_the_spec_profiles_get_all_and_its_size_goes_down_as_it_is_read()
    {
        // The same VF in a spec-profile group: one DEV_PARTS_GET ALL through a GET object.
        byte[] blob;
        using (var spec = new GroupBackend(vfs: 2))
        using (var owner = OwnerDriver.Connect(spec.Socket(0)))
        {
            owner.UseAllCommands();
            Assert.True(owner.Admin.Execute((ushort)AdminOpcode.DriverCapSet, Self, 0, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1], 0).Ok);
            Assert.True(owner.Admin.Execute((ushort)AdminOpcode.ResourceObjCreate, SrIov, 1, new byte[24], 0).Ok);
            var get = owner.Admin.Execute((ushort)AdminOpcode.DevPartsGet, SrIov, 1, [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 4096);
            Assert.True(get.Ok, get.Describe());
            blob = get.Result;
        }

        SetMode(1, Stop);
        ulong size = Size(1);
        Assert.Equal((ulong)blob.Length, size);
        var read = new List<byte>();
        int reads = 0;
        while (true)
        {
            var chunk = ReadChunk(1, 100);
            reads++;
            if (chunk.Length == 0)
                break;
            read.AddRange(chunk);
            ulong now = Size(1);
            Assert.Equal((ulong)(blob.Length - read.Count), now);
            Assert.True(now < size, $"size {now} did not go down from {size}");
            size = now;
        }
        Assert.True(reads > 3, $"{reads} reads: the context should need several");
        Assert.Equal(blob, read.ToArray());
        // Consumed: nothing left, and reads keep saying so until a new context is made.
        Assert.Equal(0UL, Size(1));
        Assert.Empty(ReadChunk(1, 100));
        // The size for Freeze is that of a whole new context.
        Assert.Equal((ulong)blob.Length, Size(1, freezeMode: 1));
        SetMode(1, Active);
    }

    [Fact]
    public void A_context_write_outside_freeze_is_refused()
    {
        AssertStatus(Run(SeedOpcode.DevCtxWrite, 1, [1, 2, 3], 0), AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        SetMode(1, Stop);
        AssertStatus(Run(SeedOpcode.DevCtxWrite, 1, [1, 2, 3], 0), AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        // Nothing was kept: leaving Stop for Freeze and then Active applies nothing and succeeds.
        SetMode(1, Freeze);
        SetMode(1, Active);
    }

    [Fact]
    public void A_context_written_in_freeze_to_another_vf_takes_effect_only_when_it_leaves_freeze()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        // The source differs from the defaults: link down, trusted.
        AssertOk(Run((ushort)AdminOpcode.NetMemberCtrl, 1, Control(0x81, 0), 0));
        AssertOk(Run((ushort)AdminOpcode.NetMemberCtrl, 1, Control(0x80, 1), 0));
        SetMode(1, Stop);
        SetMode(1, Freeze);
        var context = ReadContext(1, chunk: 64);

        var vf2Device = _backend.Member(2).Device;
        SetMode(2, Stop);
        SetMode(2, Freeze);
        WriteContext(2, context);
        Assert.True(vf2Device.LinkUp, "state changed while frozen");
        Assert.False(vf2Device.Trusted, "state changed while frozen");
        SetMode(2, Active);
        Assert.False(vf2Device.LinkUp);
        Assert.True(vf2Device.Trusted);
        Assert.False(_backend.Member(2).Endpoint.Backend.MemberStopped);
        SetMode(1, Active);
    }

    [Fact]
    public void Leaving_freeze_with_a_truncated_context_fails_and_changes_nothing()
    {
        AssertOk(Run((ushort)AdminOpcode.NetMemberCtrl, 1, Control(0x81, 0), 0));
        var context = ReadContext(1);
        var vf2Device = _backend.Member(2).Device;
        SetMode(2, Freeze);
        WriteContext(2, context[..^5]);
        AssertStatus(Run(SeedOpcode.DevModeSet, 2, [Active], 0), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertStatus(Run(SeedOpcode.DevModeSet, 2, [Stop], 0), AdminStatus.Einval, AdminQualifier.InvalidField);
        Assert.Equal(Freeze, Mode(2));
        Assert.True(_backend.Member(2).Endpoint.Backend.MemberStopped);
        Assert.True(vf2Device.LinkUp);
        Assert.True(_backend.Logs.HasWarning("refused on leaving Freeze"), _backend.Logs.Dump());
        // Discarded, the member leaves Freeze as if nothing had been written.
        AssertOk(Run(SeedOpcode.DevCtxDiscard, 2, result: 0));
        SetMode(2, Active);
        Assert.True(vf2Device.LinkUp);
    }

    [Fact]
    public void Context_data_the_queue_would_cut_or_past_the_largest_context_is_refused_and_nothing_is_kept()
    {
        AssertOk(Run((ushort)AdminOpcode.NetMemberCtrl, 2, Control(0x81, 0), 0));
        var source = ReadContext(2);
        SetMode(1, Freeze);
        // 5000 bytes of data: more than the queue reads of one command, so it would lose some.
        AssertStatus(Run(SeedOpcode.DevCtxWrite, 1, new byte[5000], 0), AdminStatus.Einval, AdminQualifier.InvalidField);
        WriteContext(1, source);
        SetMode(1, Active); // applies: the refused bytes were not appended
        Assert.False(_backend.Member(1).Device.LinkUp);

        SetMode(1, Freeze);
        int accepted = 0;
        while (Run(SeedOpcode.DevCtxWrite, 1, new byte[1000], 0) is { Ok: true })
            accepted += 1000;
        int max = DevicePartsWriter.MaxLength(NetMemberShape.Of(_backend.Member(1).Device, _backend.Group.Msix.PerVfMax));
        Assert.InRange(accepted, max - 999, max);
        AssertOk(Run(SeedOpcode.DevCtxDiscard, 1, result: 0));
        SetMode(1, Active);
    }

    [Fact]
    public void Each_mode_change_makes_a_new_context_to_read()
    {
        SetMode(1, Stop);
        var stopped = ReadContext(1);
        Assert.Equal(0UL, Size(1));
        SetMode(1, Freeze);
        Assert.Equal((ulong)stopped.Length, Size(1));
        Assert.Equal(stopped, ReadContext(1));
        SetMode(1, Active);
    }

    [Fact]
    public void Discard_drops_a_partly_read_context_and_a_partly_written_one()
    {
        SetMode(1, Stop);
        ulong full = Size(1);
        var first = ReadChunk(1, 50);
        Assert.Equal(full - 50, Size(1));
        AssertOk(Run(SeedOpcode.DevCtxDiscard, 1, result: 0));
        Assert.Equal(full, Size(1));
        Assert.Equal(first, ReadChunk(1, 50)); // reading starts again from the beginning

        AssertOk(Run((ushort)AdminOpcode.NetMemberCtrl, 2, Control(0x81, 0), 0));
        AssertOk(Run(SeedOpcode.DevCtxDiscard, 1, result: 0));
        var source = ReadContext(2);
        SetMode(1, Freeze);
        WriteContext(1, source[..(source.Length / 2)]);
        AssertOk(Run(SeedOpcode.DevCtxDiscard, 1, result: 0));
        SetMode(1, Active);
        Assert.True(_backend.Member(1).Device.LinkUp, "a discarded context was applied");
    }

    [Fact]
    public void Fields_query_lists_every_part_type_of_the_context_with_a_length_its_records_fit()
    {
        var r = Run(SeedOpcode.DevCtxFieldsQuery, 1, result: 512);
        AssertOk(r);
        Assert.Equal(0, r.Result.Length % 16);
        var fields = new Dictionary<ushort, ulong>();
        for (int i = 0; i < r.Result.Length; i += 16)
        {
            Assert.All(r.Result[(i + 2)..(i + 8)], b => Assert.Equal(0, b));
            fields.Add(BinaryPrimitives.ReadUInt16LittleEndian(r.Result.AsSpan(i)), BinaryPrimitives.ReadUInt64LittleEndian(r.Result.AsSpan(i + 8)));
        }

        var context = ReadContext(1);
        var seen = new HashSet<ushort>();
        for (int at = 0; at < context.Length;)
        {
            var h = DevicePartHeader.Read(context.AsSpan(at), out _);
            Assert.True(fields.TryGetValue(h.Type, out ulong max), $"{h} is not listed");
            Assert.True(h.Length <= max, $"{h} is longer than the listed {max}");
            seen.Add(h.Type);
            at += DeviceParts.HeaderSize + (int)h.Length;
        }
        Assert.Equal(fields.Keys.Order(), seen.Order());
    }

    [Fact]
    public void A_frozen_vf_refuses_changes_from_the_owner_until_it_leaves_freeze()
    {
        var device = _backend.Member(1).Device;
        SetMode(1, Stop);
        AssertOk(Run((ushort)AdminOpcode.NetMemberCtrl, 1, Control(0x81, 0), 0)); // stopped is not frozen
        SetMode(1, Freeze);
        AssertStatus(Run((ushort)AdminOpcode.NetMemberCtrl, 1, Control(0x81, 1), 0), AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        AssertStatus(Run((ushort)AdminOpcode.LegacyDevCfgWrite, 1, [0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 9], 0), AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        AssertStatus(Run((ushort)AdminOpcode.LegacyCommonCfgRead, 1, [19], 1), AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        AssertStatus(Run((ushort)AdminOpcode.MemberResource, 1, [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 16), AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        AssertOk(Run((ushort)AdminOpcode.NetMemberCtrl, 2, Control(0x81, 0), 0)); // the other VF is not frozen
        Assert.False(device.LinkUp);
        SetMode(1, Active);
        AssertOk(Run((ushort)AdminOpcode.NetMemberCtrl, 1, Control(0x81, 1), 0));
        Assert.True(device.LinkUp);
    }

    [Fact]
    public void The_seed_profile_offers_its_opcodes_for_the_vfs_and_not_the_spec_parts_commands()
    {
        var sriov = Run((ushort)AdminOpcode.ListQuery, 0, result: 16);
        AssertOk(sriov);
        ulong bits = BinaryPrimitives.ReadUInt64LittleEndian(sriov.Result);
        Assert.Equal(0x3f80UL, bits & 0x3ff80); // 0x7..0xd set, 0xe..0x11 clear
        Assert.Equal(0x7fUL, bits & 0x7f);      // list and legacy commands stay
        var self = Run((ushort)AdminOpcode.ListQuery, 0, result: 16, group: Self);
        AssertOk(self);
        Assert.Equal(0b11UL, BinaryPrimitives.ReadUInt64LittleEndian(self.Result));

        for (ushort op = 0xe; op <= 0x11; op++)
            AssertStatus(Run(op, 1, new byte[16], 64), AdminStatus.Einval, AdminQualifier.InvalidOpcode);
        AssertStatus(Run((ushort)AdminOpcode.DeviceCapGet, 0, new byte[8], 8, group: Self), AdminStatus.Einval, AdminQualifier.InvalidOpcode);
    }

    [Fact]
    public void In_the_spec_profile_opcodes_0x7_to_0xd_keep_their_spec_meaning()
    {
        using var spec = new GroupBackend(vfs: 2);
        using var owner = OwnerDriver.Connect(spec.Socket(0));
        owner.UseAllCommands();
        Assert.Equal(AdminProfile.Spec, spec.Group.Options.AdminProfile);
        // 0x7 is CAP_ID_LIST_QUERY on the self group and not an SR-IOV command; 0x8 is not DEV_MODE_SET.
        var caps = owner.Admin.Execute(0x7, Self, 0, [], 8);
        Assert.True(caps.Ok && caps.Result[0] == 1, caps.Describe());
        var modeGet = owner.Admin.Execute(0x7, SrIov, 1, [], 8);
        Assert.Equal(((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidOpcode), (modeGet.Status, modeGet.Qualifier));
        var modeSet = owner.Admin.Execute(0x8, SrIov, 1, [Freeze], 8);
        Assert.Equal(((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidOpcode), (modeSet.Status, modeSet.Qualifier));
        Assert.False(spec.Member(1).Endpoint.Backend.MemberStopped);
        // 0xa is RESOURCE_OBJ_CREATE: without driver limits, the object id is out of range.
        var create = owner.Admin.Execute(0xa, SrIov, 1, new byte[24], 0);
        Assert.Equal(((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidField), (create.Status, create.Qualifier));
        // 0x11 is the spec's DEV_MODE_SET with its flags.
        Assert.True(owner.Admin.Execute(0x11, SrIov, 1, [1], 0).Ok);
        Assert.True(spec.Member(1).Endpoint.Backend.MemberStopped);
        Assert.True(owner.Admin.Execute(0x11, SrIov, 1, [0], 0).Ok);
    }

    [Fact]
    public void A_frozen_vfs_own_front_end_cannot_change_its_state_until_it_leaves_freeze()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        AssertOk(Run(0x8, 1, [Freeze], 0));
        // A status change from the VF's own driver side is refused while frozen.
        Assert.ThrowsAny<FrontEnd.FrontEndException>(() => vf1.Session.Connection.Request(FrontendRequest.SetStatus, BitConverter.GetBytes(0x0fUL)));
        Assert.Equal(MessageErrorKind.InvalidState, _backend.Member(1).Endpoint.Backend.LastRejection?.Kind);
        AssertOk(Run(0x8, 1, [Stop], 0));
        Assert.False(_backend.Member(1).Endpoint.Backend.MemberFrozen);
        vf1.Session.Connection.Request(FrontendRequest.SetStatus, BitConverter.GetBytes(0x0fUL)); // stopped, not frozen: accepted
        AssertOk(Run(0x8, 1, [Active], 0));
    }
}
