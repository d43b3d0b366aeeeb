using System.Buffers;
using System.Buffers.Binary;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Migration;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

using static VhostUserVirtio.Tests.Support.PartsStream;

namespace VhostUserVirtio.Tests;

/// <summary>
/// VIRTIO 1.4 §4.3–4.5 (virtio-admin.md), device side, on real members through the owner's admin
/// queue: what DEV_PARTS_SET accepts is what the member then returns from DEV_PARTS_GET; every
/// truncation and every swap of two records of a valid stream, and a stream from a device with
/// another queue count, are refused and leave the member exactly as it was (its parts compared
/// byte for byte before and after); the metadata, selection and object rules of the commands.
/// </summary>
[Trait("tier", "unit")]
public sealed class DevicePartsMemberTests() : OwnerTest(useAllCommands: true)
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov, Self = (ushort)AdminGroupType.Self;
    private const byte Get = 0, Set = 1;

    private AdminReply Run(AdminOpcode op, ushort group, ulong member, byte[] data, int result = 64) =>
        _owner.Admin.Execute((ushort)op, group, member, data, result);

    private static void AssertOk(AdminReply r) => Assert.True(r.Ok, r.Describe());

    private static void AssertStatus(AdminReply r, AdminStatus status, AdminQualifier? qualifier = null)
    {
        Assert.True(r.Status == (ushort)status, r.Describe());
        if (qualifier is { } q)
            Assert.True(r.Qualifier == (ushort)q, r.Describe());
    }

    private static byte[] Header(uint id) => [0, 0, 0, 0, (byte)id, (byte)(id >> 8), (byte)(id >> 16), (byte)(id >> 24)];

    private static byte[] Typed(uint id, byte type) => [.. Header(id), type, 0, 0, 0, 0, 0, 0, 0];

    private void Limits(byte get, byte set) => AssertOk(Run(AdminOpcode.DriverCapSet, Self, 0, [0, 0, 0, 0, 0, 0, 0, 0, get, set]));

    private void Create(ulong member, uint id, byte kind) =>
        AssertOk(Run(AdminOpcode.ResourceObjCreate, SrIov, member, [.. Header(id), 0, 0, 0, 0, 0, 0, 0, 0, kind, 0, 0, 0, 0, 0, 0, 0], 0));

    private void Stop(ulong member) => AssertOk(Run(AdminOpcode.DevModeSet, SrIov, member, [1], 0));

    private byte[] GetAll(ulong member, uint id)
    {
        var r = Run(AdminOpcode.DevPartsGet, SrIov, member, Typed(id, 1), 4096);
        AssertOk(r);
        return r.Result;
    }

    private AdminReply SetParts(ulong member, uint id, byte[] stream) => Run(AdminOpcode.DevPartsSet, SrIov, member, [.. Header(id), .. stream], 0);

    private void Ctrl(ulong member, byte cls, byte command, params byte[] value) =>
        AssertOk(Run(AdminOpcode.NetMemberCtrl, SrIov, member, [cls, command, 0, 0, 0, 0, 0, 0, .. value], 0));

    private NetMemberShape ShapeOf(int vf) => NetMemberShape.Of(_backend.Member(vf).Device, _backend.Group.Msix.PerVfMax);

    /// <summary>
    /// VF1 configured and stopped with a GET object (id 0); VF2 stopped with a GET (1) and a SET (2)
    /// object. Returns VF1's stream and VF2's parts as they are before anything is set.
    /// </summary>
    private (byte[] Stream, byte[] Before) SourceAndStoppedTarget()
    {
        ConfigureVf1();
        Limits(get: 2, set: 1);
        Create(1, 0, Get);
        Create(2, 1, Get);
        Create(2, 2, Set);
        Stop(1);
        Stop(2);
        return (GetAll(1, 0), GetAll(2, 1));
    }

    /// <summary>VF1 with every owner-settable part away from a fresh member's: trust, MAC, modes, tables, link, MSI-X vectors.</summary>
    private void ConfigureVf1()
    {
        Ctrl(1, 0x80, 0, 1);
        Ctrl(1, 1, 1, 0x02, 0x56, 0x56, 0x00, 0x01, 0x11);
        Ctrl(1, 0, 0, 0);
        Ctrl(1, 0, 5, 1);
        Ctrl(1, 1, 0, [2, 0, 0, 0, 2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 0xa, 1, 0, 0, 0, 1, 0, 0x5e, 0, 0, 1]);
        Ctrl(1, 0x81, 0, 0);
        Assert.True(_backend.Group.DataPath.Loop.Invoke(() => _backend.Group.Msix.TryAssign(0, 7)));
    }

    // ---- SET then GET ----

    [Fact]
    public void Every_truncation_and_every_swap_of_two_records_is_refused_and_leaves_the_member_exactly_as_it_was()
    {
        var (stream, before) = SourceAndStoppedTarget();
        Assert.NotEqual(before, stream);
        int vectorsBefore = _backend.Group.Msix.Assigned(1);

        void Refused(byte[] bad, string what)
        {
            var reply = SetParts(2, 2, bad);
            Assert.True(reply.Status == (ushort)AdminStatus.Einval && reply.Qualifier == (ushort)AdminQualifier.InvalidField, $"{what}: {reply.Describe()}");
            Assert.True(before.AsSpan().SequenceEqual(GetAll(2, 1)), $"{what}: the member's parts changed");
            Assert.True(vectorsBefore == _backend.Group.Msix.Assigned(1), $"{what}: the member's MSI-X vectors changed");
        }
        for (int cut = 0; cut < stream.Length; cut++)
            Refused(stream[..cut], $"cut at {cut} of {stream.Length}");
        var records = Records(stream);
        for (int i = 0; i < records.Count; i++)
            for (int j = i + 1; j < records.Count; j++)
            {
                var swapped = records.ToList();
                (swapped[i], swapped[j]) = (swapped[j], swapped[i]);
                Refused([.. swapped.SelectMany(r => r)], $"records {i} and {j} of {records.Count} swapped");
            }

        // The stream itself is accepted, and the member then holds exactly the source's parts.
        AssertOk(SetParts(2, 2, stream));
        Assert.Equal(stream, GetAll(2, 1));
    }

    [Fact]
    public void Random_states_set_on_a_stopped_member_are_what_it_then_returns()
    {
        Limits(get: 1, set: 1);
        Create(2, 0, Get);
        Create(2, 1, Set);
        Stop(2);
        var shape = ShapeOf(2);
        int share = _backend.Group.Msix.Total - _backend.Group.Msix.Assigned(0);
        RandomMemberStates.Run(500, (rng, _) =>
        {
            var state = RandomMemberStates.State(rng, shape, share, withMac: true);
            using var encoded = DevicePartsWriter.Build(state);
            var reply = SetParts(2, 1, encoded.AsReadOnlySequence.ToArray());
            Assert.True(reply.Ok, reply.Describe());
            Assert.Null(DevicePartsReader.TryRead(new ReadOnlySequence<byte>(GetAll(2, 0)), shape, out var back));
            // Device status, vector numbers and ring placement go to the transport that resumes the
            // member (its own front end, docs/owner-binding.md "Device parts"); a member without one reads as unused.
            var unused = Enumerable.Repeat(VirtqueueState.Unused, shape.QueueCount).ToArray();
            Assert.Equal(state with { Queues = [.. unused], ConfigVector = DeviceParts.NoVector, Status = 0 }, back);
        });
    }

    [Fact]
    public void A_stream_from_a_device_with_another_queue_count_is_refused_and_changes_nothing()
    {
        using var wide = new GroupBackend(vfs: 1, configure: o => o with { QueuePairs = 2 });
        var (error, foreign) = wide.Group.DataPath.Loop.Invoke(() =>
            (NetMemberMigration.CaptureParts(wide.Member(1), wide.Group.Msix, out var p), p));
        Assert.Null(error);
        Assert.Equal(DeviceStateErrorKind.ShapeMismatch, DevicePartsReader.TryRead(new ReadOnlySequence<byte>(foreign!), ShapeOf(2), out _)?.Kind);

        var (_, before) = SourceAndStoppedTarget();
        AssertStatus(SetParts(2, 2, foreign!), AdminStatus.Einval, AdminQualifier.InvalidField);
        Assert.Equal(before, GetAll(2, 1));

        // And the other way: this device's stream is refused by the wider one.
        var ours = GetAll(1, 0);
        var wideVf = wide.Member(1);
        Assert.Equal(DeviceStateErrorKind.ShapeMismatch, wide.Group.DataPath.Loop.Invoke(() =>
            NetMemberMigration.Restore(new ReadOnlySequence<byte>(ours), wideVf.Device, wideVf.Endpoint.Backend.Queues,
                new MemberVectors(wide.Group.Msix, 0), out _))?.Kind);
    }

    [Theory]
    [InlineData("length")]
    [InlineData("device features")]
    [InlineData("driver features")]
    [InlineData("unknown part")]
    public void Set_fails_on_a_part_the_device_would_not_hold_and_changes_nothing(string what)
    {
        var (stream, before) = SourceAndStoppedTarget();
        switch (what)
        {
            case "length": // DEVICE_STATUS (the fifth record) claims 2 bytes
                stream = [.. stream[..(4 * 16 + 8 + 8 + 2 + 2 + 12)], 2, .. stream[(4 * 16 + 8 + 8 + 2 + 2 + 13)..]];
                break;
            case "device features":
                stream[16] ^= 1;
                break;
            case "driver features": // a bit the device does not offer
                ulong absent = ~ShapeOf(2).DeviceFeatures & (ulong)-(long)~ShapeOf(2).DeviceFeatures;
                ulong driver = BinaryPrimitives.ReadUInt64LittleEndian(stream.AsSpan(24 + 16)) | absent;
                BinaryPrimitives.WriteUInt64LittleEndian(stream.AsSpan(24 + 16), driver);
                break;
            case "unknown part":
                stream = [.. stream, 0x06, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                break;
        }
        AssertStatus(SetParts(2, 2, stream), AdminStatus.Einval, AdminQualifier.InvalidField);
        Assert.Equal(before, GetAll(2, 1));
    }

    // ---- stopped ----

    [Fact]
    public void The_parts_of_a_stopped_member_do_not_change_while_frames_arrive_for_it()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(4);
        Limits(get: 1, set: 0);
        Create(2, 0, Get);
        Stop(2);
        var before = GetAll(2, 0);
        // Unicast to VF2 and broadcast: both reach VF2's port while it is stopped.
        vf1.Send(NetFrontEnd.Frame("02:56:56:00:00:02", "02:56:56:00:00:01", "to a stopped vf"));
        vf1.Send(NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", "02:56:56:00:00:01", "broadcast"));
        Assert.Equal(2L, _backend.Member(1).Device.Counters.TxPackets);
        Assert.Equal(before, GetAll(2, 0));
        Assert.True(vf2.NothingWithin(200), "a stopped VF received a frame");
        // Not lost without a trace: the switch counts what it held back from the stopped port.
        Assert.Equal(2L, _backend.Group.Status().DroppedWhileStopped);
    }

    // ---- §4.3 capabilities ----

    [Fact]
    public void Every_capability_command_fails_with_einval_outside_the_self_group()
    {
        AssertStatus(Run(AdminOpcode.CapIdListQuery, SrIov, 1, [], 8), AdminStatus.Einval);
        AssertStatus(Run(AdminOpcode.DeviceCapGet, SrIov, 1, [0, 0, 0, 0, 0, 0, 0, 0]), AdminStatus.Einval);
        AssertStatus(Run(AdminOpcode.DriverCapSet, SrIov, 1, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1], 0), AdminStatus.Einval);
        // Nothing was set: no object can be created (the limits are still unset, so 0).
        AssertStatus(Run(AdminOpcode.ResourceObjCreate, SrIov, 1, [.. Header(0), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0), AdminStatus.Einval);
        var list = Run(AdminOpcode.CapIdListQuery, Self, 0, [], 8);
        AssertOk(list);
        Assert.Equal(1, list.Result[0] & 1); // VIRTIO_DEV_PARTS_CAP
    }

    [Fact]
    public void An_owner_device_reset_unsets_the_drivers_limits_and_destroys_every_object()
    {
        Limits(get: 1, set: 1);
        Create(1, 0, Get);
        Create(2, 1, Set);
        _owner.Dispose();
        Assert.True(SpinWait.SpinUntil(() => !_backend.Member(0).Endpoint.IsConnected, TimeSpan.FromSeconds(10)));
        _owner = OwnerDriver.Connect(_backend.Socket(0));
        _owner.UseAllCommands();

        AssertStatus(Run(AdminOpcode.ResourceObjQuery, SrIov, 1, [.. Header(0), 0, 0, 0, 0, 0, 0, 0, 0], 8), AdminStatus.Enxio);
        AssertStatus(Run(AdminOpcode.ResourceObjQuery, SrIov, 2, [.. Header(1), 0, 0, 0, 0, 0, 0, 0, 0], 8), AdminStatus.Enxio);
        // An unset limit counts as 0: no object until the driver sets its limits again.
        AssertStatus(Run(AdminOpcode.ResourceObjCreate, SrIov, 1, [.. Header(0), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0), AdminStatus.Einval);
        var cap = Run(AdminOpcode.DeviceCapGet, Self, 0, [0, 0, 0, 0, 0, 0, 0, 0]);
        AssertOk(cap);
        Assert.True(cap.Result[0] > 1 && cap.Result[1] > 1, "the device's own limits are not the driver's");
        Limits(get: 1, set: 1);
        Create(1, 0, Get);
    }

    // ---- §4.5 metadata, selection and objects ----

    [Fact]
    public void Metadata_list_returns_the_headers_of_get_all_in_its_order_and_count_their_number()
    {
        ConfigureVf1();
        Limits(get: 1, set: 0);
        Create(1, 0, Get);
        Stop(1);
        var headers = Records(GetAll(1, 0)).Select(r => r[..16]).ToList();
        var count = Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 1), 8);
        AssertOk(count);
        Assert.Equal((uint)headers.Count, BinaryPrimitives.ReadUInt32LittleEndian(count.Result));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(count.Result.AsSpan(4)));
        var list = Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 2), 8 + 16 * headers.Count);
        AssertOk(list);
        Assert.Equal((uint)(8 + 16 * headers.Count), list.UsedLength - 8);
        Assert.Equal((uint)headers.Count, BinaryPrimitives.ReadUInt32LittleEndian(list.Result));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(list.Result.AsSpan(4)));
        for (int i = 0; i < headers.Count; i++)
            Assert.Equal(headers[i], list.Result[(8 + 16 * i)..(24 + 16 * i)]);
        var size = Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 0), 8);
        AssertOk(size);
        Assert.True(BinaryPrimitives.ReadUInt32LittleEndian(size.Result) >= headers.Sum(h => 16 + BinaryPrimitives.ReadUInt32LittleEndian(h.AsSpan(12))));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(size.Result.AsSpan(4)));
    }

    [Fact]
    public void Metadata_with_too_little_result_room_fails_with_enomem_and_unknown_types_or_reserved_bytes_with_einval()
    {
        Limits(get: 1, set: 0);
        Create(1, 0, Get);
        var count = Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 1), 8);
        AssertOk(count);
        int n = (int)BinaryPrimitives.ReadUInt32LittleEndian(count.Result);
        AssertStatus(Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 0), 4), AdminStatus.Enomem);
        AssertStatus(Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 1), 4), AdminStatus.Enomem);
        AssertStatus(Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 2), 8 + 16 * (n - 1)), AdminStatus.Enomem);
        AssertStatus(Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, Typed(0, 3), 64), AdminStatus.Einval, AdminQualifier.InvalidField);
        var reserved = Typed(0, 0);
        reserved[12] = 1;
        AssertStatus(Run(AdminOpcode.DevPartsMetadataGet, SrIov, 1, reserved, 64), AdminStatus.Einval, AdminQualifier.InvalidField);
    }

    [Fact]
    public void Get_selected_returns_the_named_parts_in_the_mandated_order_and_skips_those_that_do_not_exist()
    {
        Limits(get: 1, set: 0);
        Create(1, 0, Get);
        var all = Records(GetAll(1, 0));
        static byte[] Wanted(ushort type, ulong selector)
        {
            var h = new byte[16];
            new DevicePartHeader(type, 0, selector, 0).Write(h);
            return h;
        }
        byte[] request =
        [
            .. Typed(0, 0),
            .. Wanted(DevicePartType.VqNotifyCfg, 1),
            .. Wanted(DevicePartType.DeviceStatus, 0),
            .. Wanted(DevicePartType.VqCfg, 7),       // no queue 7
            .. Wanted(0x0106, 0),                     // no such part type
            .. Wanted(DevicePartType.PciCommonCfg, 0), // an offset this device does not carry
            .. Wanted(DevicePartType.DrvFeatures, 0),
        ];
        var r = Run(AdminOpcode.DevPartsGet, SrIov, 1, request, 4096);
        AssertOk(r);
        byte[] expected = [.. all.Where(p => Is(p, DevicePartType.DrvFeatures, 0) || Is(p, DevicePartType.DeviceStatus, 0) || Is(p, DevicePartType.VqNotifyCfg, 1)).SelectMany(p => p)];
        Assert.Equal(expected, r.Result);
        Assert.Equal(3, Records(r.Result).Count);

        static bool Is(byte[] part, ushort type, ulong selector) =>
            BinaryPrimitives.ReadUInt16LittleEndian(part) == type && BinaryPrimitives.ReadUInt64LittleEndian(part.AsSpan(4)) == selector;
    }

    [Fact]
    public void Parts_commands_naming_another_members_object_fail_with_einval()
    {
        Limits(get: 1, set: 1);
        Create(1, 0, Get);
        Create(1, 1, Set);
        Stop(1);
        Stop(2);
        var stream = GetAll(1, 0);
        AssertStatus(Run(AdminOpcode.DevPartsGet, SrIov, 2, Typed(0, 1), 4096), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertStatus(Run(AdminOpcode.DevPartsMetadataGet, SrIov, 2, Typed(0, 0), 8), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertStatus(SetParts(2, 1, stream), AdminStatus.Einval, AdminQualifier.InvalidField);
        // An object header of another resource type is not a DEV_PARTS object.
        var other = Typed(0, 1);
        other[0] = 0x00;
        other[1] = 0x02;
        AssertStatus(Run(AdminOpcode.DevPartsGet, SrIov, 1, other, 4096), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertOk(SetParts(1, 1, stream));
    }
}
