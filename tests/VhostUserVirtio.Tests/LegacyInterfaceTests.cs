using System.Buffers.Binary;
using System.Text;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The legacy interface commands (VIRTIO 1.4 "Legacy Interface", opcodes 0x2–0x6) over a real admin
/// queue. Test names follow the device-side statements of that section and of the legacy register
/// layout a member must present (docs/admin-conformance.md).
/// </summary>
[Trait("tier", "unit")]
public sealed class LegacyInterfaceTests() : OwnerTest(useAllCommands: true)
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov;
    private LegacyAccess Vf(ulong id) => new(_owner.Admin, id);

    private static void AssertInvalidField(AdminReply r)
    {
        Assert.Equal((ushort)AdminStatus.Einval, r.Status);
        Assert.Equal((ushort)AdminQualifier.InvalidField, r.Qualifier);
    }

    private static ushort Le16(byte[] b) => BinaryPrimitives.ReadUInt16LittleEndian(b);

    [Fact]
    public void The_device_supports_all_of_0x2_to_0x6_for_the_sriov_group_and_none_for_the_self_group()
    {
        var sriov = _owner.Admin.Execute((ushort)AdminOpcode.ListQuery, SrIov, 0, default, 8);
        var self = _owner.Admin.Execute((ushort)AdminOpcode.ListQuery, (ushort)AdminGroupType.Self, 0, default, 8);
        ulong s = BinaryPrimitives.ReadUInt64LittleEndian(sriov.Result), own = BinaryPrimitives.ReadUInt64LittleEndian(self.Result);
        Assert.Equal(0x7cUL, s & 0x7c);
        Assert.Equal(0UL, own & 0x7c);
        var r = _owner.Admin.Execute((ushort)AdminOpcode.LegacyCommonCfgRead, (ushort)AdminGroupType.Self, 0, [0], 4);
        Assert.Equal(((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidOpcode), (r.Status, r.Qualifier));
    }

    [Fact]
    public void Legacy_commands_name_an_existing_vf_or_fail_with_invalid_member()
    {
        foreach (ulong member in new ulong[] { 0, 3, ulong.MaxValue })
        {
            var r = Vf(member).ReadCommonRaw(LegacyLayout.HostFeatures, 4);
            Assert.Equal(((ushort)AdminStatus.Einval, (ushort)AdminQualifier.InvalidMember), (r.Status, r.Qualifier));
        }
    }

    [Fact]
    public void Register_data_is_little_endian_and_sub_field_reads_of_1_2_or_4_bytes_see_the_same_field()
    {
        var vf = Vf(1);
        uint features = vf.ReadCommon(LegacyLayout.HostFeatures, 4);
        Assert.True((features & (1u << 5)) != 0, "MAC feature missing from the legacy host features");
        Assert.Equal(features & 0xffff, vf.ReadCommon(LegacyLayout.HostFeatures, 2));
        Assert.Equal(features >> 16, vf.ReadCommon(LegacyLayout.HostFeatures + 2, 2));
        Assert.Equal((features >> 24) & 0xff, vf.ReadCommon(LegacyLayout.HostFeatures + 3, 1));

        vf.WriteCommon(LegacyLayout.QueueSelect, 2, 0);
        Assert.Equal(256u, vf.ReadCommon(LegacyLayout.QueueSize, 2));
        Assert.Equal(1u, vf.ReadCommon(LegacyLayout.QueueSize + 1, 1)); // high byte of 0x0100
        vf.WriteCommon(LegacyLayout.QueueSelect, 2, 99);
        Assert.Equal(0u, vf.ReadCommon(LegacyLayout.QueueSize, 2)); // size 0: no such queue
        Assert.Equal(99u, vf.ReadCommon(LegacyLayout.QueueSelect, 2));

        // Device config: mac (sub-field too), status with LINK_UP, max_virtqueue_pairs, mtu.
        var mac = new byte[6];
        _backend.Member(1).Device.Mac!.Value.Write(mac);
        Assert.Equal(mac, vf.ReadDevice(LegacyLayout.NetMac, 6));
        Assert.Equal(mac[2..6], vf.ReadDevice(LegacyLayout.NetMac + 2, 4));
        Assert.Equal(1, Le16(vf.ReadDevice(LegacyLayout.NetStatus, 2)));
        Assert.Equal(1, Le16(vf.ReadDevice(LegacyLayout.NetMaxPairs, 2)));
        Assert.Equal(1500, Le16(vf.ReadDevice(LegacyLayout.NetMtu, 2)));
    }

    [Theory]
    [InlineData(true, 2, 4)]    // host features into guest features
    [InlineData(true, 17, 2)]   // queue notify into status
    [InlineData(true, 19, 2)]   // ISR into the config vector
    [InlineData(true, 24, 1)]   // past the common header
    [InlineData(true, 255, 1)]
    [InlineData(true, 0, 0)]    // zero length
    [InlineData(true, 0, 8)]    // longer than any field
    [InlineData(false, 5, 2)]   // mac into status
    [InlineData(false, 12, 1)]  // past the device config
    [InlineData(false, 0, 7)]
    public void An_access_that_is_not_inside_one_field_fails_with_einval_invalid_field(bool common, int offset, int length)
    {
        var vf = Vf(1);
        AssertInvalidField(common ? vf.ReadCommonRaw(offset, length) : vf.ReadDeviceRaw(offset, length));
        var data = new byte[length];
        AssertInvalidField(common ? vf.WriteCommonRaw(offset, data) : vf.WriteDeviceRaw(offset, data));
        Assert.Equal(0u, vf.ReadCommon(LegacyLayout.DeviceStatus, 1)); // nothing happened
    }

    [Fact]
    public void Writes_to_read_only_registers_are_refused_and_change_nothing()
    {
        var vf = Vf(1);
        uint features = vf.ReadCommon(LegacyLayout.HostFeatures, 4);
        AssertInvalidField(vf.WriteCommonRaw(LegacyLayout.HostFeatures, [0, 0, 0, 0]));
        AssertInvalidField(vf.WriteCommonRaw(LegacyLayout.QueueSize, [16, 0]));
        AssertInvalidField(vf.WriteCommonRaw(LegacyLayout.IsrStatus, [3]));
        AssertInvalidField(vf.WriteDeviceRaw(LegacyLayout.NetStatus, [0, 0]));
        AssertInvalidField(vf.WriteDeviceRaw(LegacyLayout.NetMtu, [0x40, 0]));
        Assert.Equal(features, vf.ReadCommon(LegacyLayout.HostFeatures, 4));
        Assert.Equal(256u, vf.ReadCommon(LegacyLayout.QueueSize, 2));
        Assert.Equal(1500, Le16(vf.ReadDevice(LegacyLayout.NetMtu, 2)));
        Assert.True(_backend.Member(1).Device.LinkUp);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_vf_driven_only_through_legacy_commands_exchanges_frames_through_the_switch(bool doorbells)
    {
        using var legacy = LegacyNetDriver.Start(_owner.Admin, 1, _backend.Socket(1), doorbells: doorbells);
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(8);
        Assert.Equal(7, legacy.Status); // ACK | DRIVER | DRIVER_OK
        var mac1 = Mac.Read(legacy.Mac);
        var mac2 = _backend.Member(2).Device.Mac!.Value;

        // Legacy VF1 -> VF2.
        legacy.Send(NetFrontEnd.Frame(mac2.ToString(), mac1.ToString(), "legacy to modern"));
        var (_, got) = vf2.Receive();
        Assert.Contains("legacy to modern", Encoding.ASCII.GetString(got));

        // VF2 -> legacy VF1: the frame lands in the legacy rx ring and the interrupt (call fd) fires.
        vf2.Send(NetFrontEnd.Frame(mac1.ToString(), mac2.ToString(), "modern to legacy"));
        var frame = legacy.Receive(10_000);
        Assert.NotNull(frame);
        Assert.Contains("modern to legacy", Encoding.ASCII.GetString(frame));
        Assert.Equal(1, _backend.Member(1).Device.Counters.TxPackets);
        Assert.Equal(1, _backend.Member(1).Device.Counters.RxPackets);
        var ports = _backend.Group.Status().Ports;
        Assert.True(ports.Single(p => p.Name == "vf1").LegacyDriven);
        Assert.False(ports.Single(p => p.Name == "vf2").LegacyDriven);
    }

    [Fact]
    public void Reading_isr_status_returns_its_bits_and_clears_them()
    {
        using var legacy = LegacyNetDriver.Start(_owner.Admin, 1, _backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        legacy.ReadIsr();
        vf2.Send(NetFrontEnd.Frame(Mac.Read(legacy.Mac).ToString(), _backend.Member(2).Device.Mac!.Value.ToString(), "isr"));
        Assert.NotNull(legacy.Receive(10_000));
        Assert.Equal(LegacyLayout.IsrQueue, legacy.ReadIsr() & LegacyLayout.IsrQueue);
        Assert.Equal(0, legacy.ReadIsr());

        // A config change by the owner (link down through NET_MEMBER_CTRL) sets the config bit.
        var r = _owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, SrIov, 1, [0x81, 0, 0, 0, 0, 0, 0, 0, 0], 0);
        Assert.True(r.Ok, r.Describe());
        Assert.Equal(LegacyLayout.IsrConfig, legacy.ReadIsr());
        Assert.False(legacy.LinkUp);
        Assert.Equal(0, legacy.ReadIsr());
    }

    [Fact]
    public void Msix_vector_registers_accept_only_vectors_inside_the_members_table()
    {
        var assign = new byte[16];
        assign[0] = 1;
        assign[8] = 2; // VF1 gets 2 vectors: 0 and 1
        Assert.True(_owner.Admin.Execute((ushort)AdminOpcode.MemberResource, SrIov, 1, assign, 16).Ok);
        var vf = Vf(1);
        vf.WriteCommon(LegacyLayout.ConfigVector, 2, 1);
        Assert.Equal(1u, vf.ReadCommon(LegacyLayout.ConfigVector, 2));
        vf.WriteCommon(LegacyLayout.ConfigVector, 2, 2);
        Assert.Equal(LegacyLayout.NoVector, vf.ReadCommon(LegacyLayout.ConfigVector, 2)); // failed assignment reads back NO_VECTOR
        vf.WriteCommon(LegacyLayout.QueueSelect, 2, 1);
        vf.WriteCommon(LegacyLayout.QueueVector, 2, 0);
        Assert.Equal(0u, vf.ReadCommon(LegacyLayout.QueueVector, 2));
        vf.WriteCommon(LegacyLayout.QueueSelect, 2, 5);
        AssertInvalidField(vf.WriteCommonRaw(LegacyLayout.QueueVector, [0, 0])); // no queue 5

        // While a legacy driver uses the VF its vector count cannot change.
        vf.WriteCommon(LegacyLayout.DeviceStatus, 1, 1);
        var busy = _owner.Admin.Execute((ushort)AdminOpcode.MemberResource, SrIov, 1, assign, 16);
        Assert.Equal((ushort)AdminStatus.Ebusy, busy.Status);
        vf.WriteCommon(LegacyLayout.DeviceStatus, 1, 0);
        Assert.True(_owner.Admin.Execute((ushort)AdminOpcode.MemberResource, SrIov, 1, assign, 16).Ok);
    }

    [Fact]
    public void Legacy_notify_info_returns_a_valid_member_entry_before_the_end_marker()
    {
        var r = _owner.Admin.Execute((ushort)AdminOpcode.LegacyNotifyInfo, SrIov, 2, default, 64);
        Assert.True(r.Ok, r.Describe());
        Assert.Equal(72u, r.UsedLength); // status + 4 entries of 16 bytes
        Assert.Equal(2, r.Result[0]);                 // member device
        Assert.InRange(r.Result[1], 1, 5);            // a BAR that is not hardwired to zero
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(r.Result.AsSpan(8)) % 2);
        Assert.Equal(0, r.Result[48]);                // the last entry ends the list
        Assert.Single(Vf(2).NotifyInfo());
    }

    [Fact]
    public void Writing_status_zero_resets_the_device_stops_its_rings_and_clears_the_registers()
    {
        var legacy = LegacyNetDriver.Start(_owner.Admin, 1, _backend.Socket(1));
        try
        {
            var vf = legacy.Registers;
            vf.WriteCommon(LegacyLayout.DeviceStatus, 1, 0);
            Assert.Equal(0u, vf.ReadCommon(LegacyLayout.DeviceStatus, 1));
            Assert.Equal(0u, vf.ReadCommon(LegacyLayout.GuestFeatures, 4));
            vf.WriteCommon(LegacyLayout.QueueSelect, 2, 0);
            Assert.Equal(0u, vf.ReadCommon(LegacyLayout.QueueAddress, 4));
            Assert.Equal(LegacyLayout.NoVector, vf.ReadCommon(LegacyLayout.QueueVector, 2));
            Assert.False(_backend.Member(1).Endpoint.Backend.Queues[0].Started);

            // Frames for the reset VF find no receive queue.
            using var vf2 = new NetFrontEnd(_backend.Socket(2));
            vf2.Send(NetFrontEnd.Frame(Mac.Read(legacy.Mac).ToString(), _backend.Member(2).Device.Mac!.Value.ToString(), "after reset"));
            Assert.True(SpinWait.SpinUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.NoRxQueue) == 1, 10_000));
        }
        finally
        {
            legacy.Dispose();
        }
    }

    [Fact]
    public void A_legacy_mac_write_changes_the_vf_mac_and_is_refused_for_an_untrusted_vf()
    {
        var vf = Vf(1);
        var trust = new byte[9];
        trust[0] = 0x80; // trust class, command 0, then u8 trusted
        trust[8] = 1;
        Assert.True(_owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, SrIov, 1, trust, 0).Ok);
        vf.WriteDevice(LegacyLayout.NetMac + 5, [0x42]);
        Assert.Equal(0x42, vf.ReadDevice(LegacyLayout.NetMac + 5, 1)[0]);
        Assert.Equal(0x42UL, _backend.Member(1).Device.Mac!.Value.Value & 0xff); // the device (and its receive filter) took it

        trust[8] = 0;
        Assert.True(_owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, SrIov, 1, trust, 0).Ok);
        AssertInvalidField(vf.WriteDeviceRaw(LegacyLayout.NetMac + 5, [0x43]));
        Assert.Equal(0x42, vf.ReadDevice(LegacyLayout.NetMac + 5, 1)[0]);
    }

    [Fact]
    public void A_queue_address_outside_the_members_memory_or_without_memory_is_refused()
    {
        var vf = Vf(1);
        vf.WriteCommon(LegacyLayout.DeviceStatus, 1, 3);
        vf.WriteCommon(LegacyLayout.QueueSelect, 2, 0);
        AssertInvalidField(vf.WriteCommonRaw(LegacyLayout.QueueAddress, [0x10, 0, 0, 0])); // no front end: no DMA space

        using var legacy = LegacyNetDriver.Start(_owner.Admin, 1, _backend.Socket(1));
        legacy.Registers.WriteCommon(LegacyLayout.QueueSelect, 2, 1);
        uint pfn = legacy.Registers.ReadCommon(LegacyLayout.QueueAddress, 4);
        AssertInvalidField(legacy.Registers.WriteCommonRaw(LegacyLayout.QueueAddress, [0, 0, 0, 0x7f])); // far beyond its RAM
        Assert.Equal(pfn, legacy.Registers.ReadCommon(LegacyLayout.QueueAddress, 4)); // the running ring is untouched
        AssertInvalidField(legacy.Registers.WriteCommonRaw(LegacyLayout.QueueNotify, [9, 0]));  // no queue 9
        legacy.Send(NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", Mac.Read(legacy.Mac).ToString(), "still works"));
    }

    [Fact]
    public void A_legacy_ring_the_driver_breaks_sets_device_needs_reset_and_disturbs_no_other_vf()
    {
        using var legacy = LegacyNetDriver.Start(_owner.Admin, 1, _backend.Socket(1));
        // A descriptor loop on the transmit ring, then a notify.
        legacy.Tx.WriteDescriptor(0, legacy.Ram.Allocate(64), 64, 1 /* NEXT */, 0);
        legacy.Tx.PublishHead(0);
        legacy.Registers.WriteCommon(LegacyLayout.QueueNotify, 2, 1);
        Assert.True(_backend.Logs.WaitForWarning("guest broke the ring rules"));
        Assert.Equal(0x40u, legacy.Registers.ReadCommon(LegacyLayout.DeviceStatus, 1) & 0x40);

        NetCheck.AssertDeviceUp(_backend.Socket(2));
        // Reset recovers the VF.
        legacy.Registers.WriteCommon(LegacyLayout.DeviceStatus, 1, 0);
        Assert.Equal(0u, legacy.Registers.ReadCommon(LegacyLayout.DeviceStatus, 1));
    }

    [Fact]
    public void While_the_owner_drives_a_vf_its_front_end_cannot_set_up_rings_and_a_driven_vf_cannot_be_claimed()
    {
        using (var modern = new NetFrontEnd(_backend.Socket(2)))
        {
            var r = Vf(2).WriteCommonRaw(LegacyLayout.DeviceStatus, [1]);
            Assert.Equal((ushort)AdminStatus.Ebusy, r.Status);
            NetCheck.AssertDeviceUp(_backend.Socket(1)); // and the refusal disturbed nobody
        }

        using var legacy = LegacyNetDriver.Start(_owner.Admin, 1, _backend.Socket(1));
        Assert.Throws<VhostUserVirtio.FrontEnd.FrontEndException>(() => legacy.Vmm.SetFeatures(0));
        Assert.Throws<VhostUserVirtio.FrontEnd.FrontEndException>(() => legacy.Vmm.SetVringNum(0, 64));
        Assert.True(_backend.Logs.HasWarning("the group owner drives this device"));
        legacy.Send(NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", Mac.Read(legacy.Mac).ToString(), "still driven"));
    }

    [Fact]
    public void Admin_commands_and_legacy_accesses_allocate_nothing_per_command_on_the_worker()
    {
        using var legacy = LegacyNetDriver.Start(_owner.Admin, 1, _backend.Socket(1));
        var vf = legacy.Registers;
        void Batch()
        {
            for (int i = 0; i < 50; i++)
            {
                vf.WriteCommon(LegacyLayout.QueueSelect, 2, (uint)(i & 1));
                vf.ReadCommon(LegacyLayout.QueueAddress, 4);
                vf.ReadCommon(LegacyLayout.DeviceStatus, 1);
                vf.ReadCommon(LegacyLayout.IsrStatus, 1);
                vf.ReadDevice(LegacyLayout.NetMac, 6);
                vf.WriteCommon(LegacyLayout.QueueNotify, 2, 1);
            }
        }
        Batch(); // warm up
        var loop = _backend.Group.DataPath.Loop;
        long before = loop.Invoke(() => GC.GetAllocatedBytesForCurrentThread());
        for (int i = 0; i < 10; i++)
            Batch();
        long after = loop.Invoke(() => GC.GetAllocatedBytesForCurrentThread());
        // 3000 commands: one small allocation per command would be tens of kilobytes; the two
        // Invoke calls cost a few hundred bytes.
        Assert.True(after - before < 2048, $"the worker allocated {after - before} bytes over 3000 admin commands");
    }

    [Fact]
    public void When_the_vfs_front_end_leaves_the_legacy_state_is_reset()
    {
        var legacy = LegacyNetDriver.Start(_owner.Admin, 1, _backend.Socket(1));
        var registers = legacy.Registers;
        legacy.Dispose();
        Assert.True(SpinWait.SpinUntil(() => !_backend.Member(1).Endpoint.IsConnected, 10_000));
        Assert.Equal(0u, registers.ReadCommon(LegacyLayout.DeviceStatus, 1));
        Assert.False(_backend.Member(1).Endpoint.Backend.OwnerDriven);
        // The VF can be driven the modern way again.
        using var modern = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        NetCheck.AssertSwitches(modern, vf2);
    }
}
