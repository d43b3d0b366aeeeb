using System.Buffers.Binary;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The owner's transport virtqueue and its managed devices (docs/owner-binding.md "Transport virtqueue
/// and managed devices"), driven by the owner-driver library as a PF driver would: discovery, the
/// device class (ids never reused, the limit), each hostile shape of command failing cleanly with
/// nothing changed, a managed device driven through the queue exchanging frames with a VF, its MSI
/// vectors, and its isolation from the other managed devices (DMA windows, MSI targets).
/// </summary>
[Trait("tier", "unit")]
public sealed class TransportQueueTests : IDisposable
{
    private const string Vf1Mac = "02:56:56:00:00:01";
    private readonly GroupBackend _backend;
    private readonly OwnerDriver _owner;

    public TransportQueueTests() : this(maxVdevs: 4) { }

    private TransportQueueTests(int maxVdevs)
    {
        _backend = new GroupBackend(vfs: 2, o => o with { MaxManagedDevices = maxVdevs });
        try
        {
            _owner = OwnerDriver.Connect(_backend.Socket(0));
        }
        catch
        {
            _backend.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        _owner.Dispose();
        _backend.Dispose();
    }

    private TransportQueueClient Tvq => _owner.Transport!;

    private static void AssertRefused(TransportReply reply, AdminStatus status, AdminQualifier qualifier)
    {
        Assert.False(reply.Ok, "the command succeeded");
        Assert.True(reply.Status == (ushort)status && reply.Qualifier == (ushort)qualifier, reply.Describe());
    }

    private static bool Eventually(Func<bool> condition) => EchoBackend.WaitUntil(condition, 15_000);

    private static byte[] Window(ulong start, ulong length)
    {
        var d = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(d, start);
        BinaryPrimitives.WriteUInt64LittleEndian(d.AsSpan(8), length);
        return d;
    }

    [Fact]
    public void The_owner_offers_the_transport_queue_after_the_admin_queue_with_its_feature_bit_and_limit()
    {
        var info = _owner.Info;
        Assert.Equal(info.AdminQueueIndex + 1, info.TvqIndex);
        Assert.Equal(1, info.TvqNum);
        Assert.Equal(4, info.MaxVdevs);
        Assert.True(VirtioFeature.Has(_owner.Session.Connection.GetFeatures(), 47), "VIRTIO_F_TRANSPT_VQ (bit 47) not offered");
        Assert.NotNull(_owner.Transport);

        using var none = new GroupBackend(vfs: 1, o => o with { MaxManagedDevices = 0 });
        using var plain = OwnerDriver.Connect(none.Socket(0));
        Assert.Equal((0, 0, 0), (plain.Info.TvqIndex, plain.Info.TvqNum, plain.Info.MaxVdevs));
        Assert.False(VirtioFeature.Has(plain.Session.Connection.GetFeatures(), 47));
        Assert.Null(plain.Transport);
    }

    [Fact]
    public void Ids_are_allocated_from_1_never_reused_and_destroyed_ids_fail_while_sockets_come_and_go()
    {
        uint a = Tvq.DevCreate(), b = Tvq.DevCreate(), c = Tvq.DevCreate();
        Assert.Equal([1u, 2u, 3u], [a, b, c]);
        Assert.True(File.Exists(Path.Combine(_backend.Directory, "vdev2.sock")), "DEV_CREATE completed before its socket existed");
        var info = Tvq.DevInfo(b);
        Assert.Equal((1u, (ushort)3, 24u), (info.VirtioDeviceId, info.NumQueues, info.ConfigSize));
        Assert.Equal(4, info.MaxVectors);

        Tvq.DevDestroy(b);
        Assert.Equal([1u, 3u], Tvq.DevList());
        AssertRefused(Tvq.Execute(b, TransportOpcode.DevInfo, default, 16), AdminStatus.Einval, AdminQualifier.InvalidMember);
        AssertRefused(Tvq.Execute(b, TransportOpcode.DevDestroy, default, 4), AdminStatus.Einval, AdminQualifier.InvalidMember);
        Assert.True(Eventually(() => !File.Exists(Path.Combine(_backend.Directory, "vdev2.sock"))), "the destroyed device's socket stayed");
        Assert.Equal(4u, Tvq.DevCreate()); // 2 is never handed out again
        Assert.Equal([1u, 3u, 4u], Tvq.DevList());
        Assert.Contains(_backend.Group.Status().Ports, p => p.Name == "vdev4");
    }

    [Fact]
    public void Creating_past_max_vdevs_fails_with_enospc_and_a_destroy_makes_room()
    {
        for (int i = 0; i < 4; i++)
            Tvq.DevCreate();
        AssertRefused(Tvq.Execute(0, TransportOpcode.DevCreate, TransportFrames.DevCreate(1), 8), AdminStatus.Enospc, AdminQualifier.NoResource);
        Assert.Equal(4, Tvq.DevList().Length);
        Tvq.DevDestroy(1);
        Assert.Equal(5u, Tvq.DevCreate());
    }

    [Fact]
    public void Hostile_commands_fail_with_the_binding_statuses_and_change_nothing()
    {
        uint id = Tvq.DevCreate();
        // Unknown class or command: INVALID_OPCODE.
        AssertRefused(Tvq.Execute(id, 9, 1, default, 4), AdminStatus.Einval, AdminQualifier.InvalidOpcode);
        AssertRefused(Tvq.Execute(id, 3, 9, default, 4), AdminStatus.Einval, AdminQualifier.InvalidOpcode);
        // DEV_LIST and DEV_CREATE belong to id 0; everything else to a device; 0 and unknown ids: INVALID_MEMBER.
        AssertRefused(Tvq.Execute(id, TransportOpcode.DevList, default, 64), AdminStatus.Einval, AdminQualifier.InvalidMember);
        AssertRefused(Tvq.Execute(id, TransportOpcode.DevCreate, TransportFrames.DevCreate(1), 8), AdminStatus.Einval, AdminQualifier.InvalidMember);
        AssertRefused(Tvq.Execute(0, TransportOpcode.StatusGet, default, 8), AdminStatus.Einval, AdminQualifier.InvalidMember);
        AssertRefused(Tvq.Execute(0, TransportOpcode.DevDestroy, default, 4), AdminStatus.Einval, AdminQualifier.InvalidMember);
        AssertRefused(Tvq.Execute(ulong.MaxValue, TransportOpcode.StatusGet, default, 8), AdminStatus.Einval, AdminQualifier.InvalidMember);
        // Data shorter than the layout: INVALID_FIELD, no zero-filling, nothing changed.
        AssertRefused(Tvq.Execute(0, TransportOpcode.DevCreate, [1, 0, 0, 0], 8), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertRefused(Tvq.Execute(id, TransportOpcode.DrvFeaturesSet, new byte[15], 4), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertRefused(Tvq.Execute(id, TransportOpcode.VqSet, new byte[31], 4), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertRefused(Tvq.Execute(id, TransportOpcode.StatusSet, [1], 4), AdminStatus.Einval, AdminQualifier.InvalidField);
        Assert.Equal(0, Tvq.StatusGet(id));
        Assert.Equal([id], Tvq.DevList());
        // Another device type, flags, a device that offers no such feature, a queue that does not exist.
        AssertRefused(Tvq.Execute(0, TransportOpcode.DevCreate, TransportFrames.DevCreate(2), 8), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertRefused(Tvq.Execute(0, TransportOpcode.DevCreate, TransportFrames.DevCreate(1, 1), 8), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertRefused(Tvq.Execute(id, TransportOpcode.DrvFeaturesSet, TransportFrames.Features(UInt128.One << 100), 4), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertRefused(Tvq.Execute(id, TransportOpcode.VqInfo, TransportFrames.Index(3), 8), AdminStatus.Einval, AdminQualifier.InvalidField);
        // A notification for a queue never set up, a config read past the end, a result room too small.
        AssertRefused(Tvq.Execute(id, TransportOpcode.Notify, TransportFrames.Index(0), 4), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertRefused(Tvq.Execute(id, TransportOpcode.CfgRead, TransportFrames.CfgRead(20, 8), 16), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertRefused(Tvq.Execute(id, TransportOpcode.DevInfo, default, 8), AdminStatus.Enomem, AdminQualifier.InvalidField);
        // A readable part shorter than the header.
        var head = Tvq.Post([1, 2, 3], 8, [3], [8]);
        Tvq.Queue.Notify();
        var reply = Tvq.Complete(head);
        AssertRefused(reply, AdminStatus.Einval, AdminQualifier.InvalidField);
        // VQ_RESET without VIRTIO_F_RING_RESET negotiated; CONFIG_VECTOR_SET of a vector that does not exist
        // assigns none; an MSI vector past the table; no doorbell BAR over vhost-user (NOTIFY instead).
        AssertRefused(Tvq.Execute(id, TransportOpcode.VqReset, TransportFrames.Index(0), 4), AdminStatus.Einval, AdminQualifier.InvalidField);
        Assert.Equal(0xFFFF, Tvq.ConfigVectorSet(id, 99));
        AssertRefused(Tvq.Execute(id, TransportOpcode.MsiGet, TransportFrames.Index(4), 16), AdminStatus.Einval, AdminQualifier.InvalidField);
        Assert.Equal(new MsiVector(0, 0, false, false), Tvq.MsiGet(id, 3));
        Assert.Equal(new NotifyInfo(0, 0, 0), Tvq.NotifyInfo(id));
        // After all that, the device is as it was and the queue still answers.
        Assert.Equal(0, Tvq.StatusGet(id));
        Assert.Equal([id], Tvq.DevList());
    }

    [Fact]
    public void A_device_driven_through_the_queue_exchanges_frames_with_a_vf_and_interrupts_by_msi_writes()
    {
        uint id = Tvq.DevCreate();
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        vf1.PostRx(16);
        using var vdev = ManagedNetDriver.Start(_owner, id);
        string vdevMac = Devices.Switch.Mac.Read(vdev.Mac).ToString();
        Assert.Equal("02:56:56:01:00:01", vdevMac);

        vdev.Send(NetFrontEnd.Frame(Vf1Mac, vdevMac, "from the managed device"));
        var atVf = vf1.Receive(15_000).Frame;
        Assert.Contains("from the managed device", System.Text.Encoding.ASCII.GetString(atVf));

        vf1.Send(NetFrontEnd.Frame(vdevMac, Vf1Mac, "to the managed device"));
        var atVdev = vdev.Receive(15_000);
        Assert.NotNull(atVdev);
        Assert.Contains("to the managed device", System.Text.Encoding.ASCII.GetString(atVdev));
        // Receive and transmit vectors (0x100 + vector) were written into the owner's memory.
        Assert.True(Eventually(() => vdev.MsiData(0) == 0x100), $"receive MSI data {vdev.MsiData(0):x}");
        Assert.Equal(0x101u, vdev.MsiData(1));
        Assert.Equal(0x0f, Tvq.StatusGet(id)); // ACK | DRIVER | DRIVER_OK | FEATURES_OK
        Assert.Equal(1, Tvq.VqGet(id, 0).Enabled);
        Assert.True(_backend.Group.Transport!.Devices.Single().Device.Counters.TxPackets == 1);
    }

    [Fact]
    public void A_masked_vector_sets_pending_instead_of_writing_and_unmasking_sends_it()
    {
        uint id = Tvq.DevCreate();
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vdev = ManagedNetDriver.Start(_owner, id);
        string vdevMac = Devices.Switch.Mac.Read(vdev.Mac).ToString();
        var rx = Tvq.MsiGet(id, 0);
        Tvq.MsiSet(id, 0, rx.Address, 0x200, masked: true);
        _owner.Session.Ram.Span(rx.Address, 4).Clear();

        vf1.Send(NetFrontEnd.Frame(vdevMac, Vf1Mac, "while masked"));
        Assert.NotNull(vdev.Receive(15_000));
        Assert.True(Eventually(() => Tvq.MsiGet(id, 0).Pending), "no pending bit while masked");
        Assert.Equal(0u, vdev.MsiData(0));

        Tvq.MsiSet(id, 0, rx.Address, 0x200, masked: false);
        Assert.Equal(0x200u, vdev.MsiData(0));
        Assert.False(Tvq.MsiGet(id, 0).Pending);
    }

    [Fact]
    public void Windows_never_overlap_and_a_ring_pointing_into_another_devices_window_breaks_only_itself()
    {
        uint a = Tvq.DevCreate(), b = Tvq.DevCreate();
        using var first = ManagedNetDriver.Start(_owner, a);
        // Another device cannot take memory inside the first one's window, nor send MSIs there.
        AssertRefused(Tvq.Execute(b, 1, 5, Window(first.WindowStart + 4096, 4096), 4), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertRefused(Tvq.Execute(b, TransportOpcode.MsiSet, TransportFrames.MsiSet(0, first.WindowStart, 1, false), 4),
            AdminStatus.Einval, AdminQualifier.InvalidField);
        // The window cannot move while the device runs.
        AssertRefused(Tvq.Execute(a, 1, 5, Window(first.WindowStart, 4096), 4), AdminStatus.Ebusy, AdminQualifier.InvalidCommand);

        using var second = ManagedNetDriver.Start(_owner, b);
        // A ring placed outside its own window is refused outright.
        Tvq.StatusSet(b, 0);
        Assert.True(Tvq.Execute(b, 1, 5, Window(second.WindowStart, second.WindowSize), 4).Ok);
        Tvq.StatusSet(b, 1);
        var q = first.Rx;
        Tvq.VqSet(b, 0, (ushort)q.Size, 0, q.DescriptorTable, q.AvailableRing, q.UsedRing);
        AssertRefused(Tvq.Execute(b, TransportOpcode.VqEnable, TransportFrames.VqEnable(0), 4), AdminStatus.Einval, AdminQualifier.InvalidField);

        // A transmit descriptor of the second device that points into the first one's window: only the second breaks.
        second.Dispose();
        using var again = ManagedNetDriver.Start(_owner, b);
        var target = first.WindowStart;
        var before = _owner.Session.Ram.Span(target, 64).ToArray();
        again.Tx.AddChain([new BufferSpec(target, 64, true)]); // a writable buffer on a transmit queue, in someone else's memory
        Tvq.Notify(b, 1);
        Assert.True(Eventually(() => (Tvq.StatusGet(b) & 0x40) != 0), "the second device's broken ring was not reported (DEVICE_NEEDS_RESET)");
        Assert.Equal(before, _owner.Session.Ram.Span(target, 64).ToArray());
        Assert.Equal(0, Tvq.StatusGet(a) & 0x40);
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        vf1.PostRx(4);
        first.Send(NetFrontEnd.Frame(Vf1Mac, "02:56:56:01:00:01", "the first still works"));
        Assert.Contains("the first still works", System.Text.Encoding.ASCII.GetString(vf1.Receive(15_000).Frame));
    }

    [Fact]
    public void Status_rules_features_ok_without_version_1_is_refused_bits_are_never_cleared_and_reset_completes()
    {
        uint id = Tvq.DevCreate();
        Tvq.StatusSet(id, 1);
        Tvq.StatusSet(id, 3);
        Tvq.DrvFeaturesSet(id, 1UL << 5); // MAC, no VERSION_1
        Tvq.StatusSet(id, 3 | 8);
        Assert.Equal(3, Tvq.StatusGet(id)); // FEATURES_OK kept clear: the driver reads it back
        AssertRefused(Tvq.Execute(id, TransportOpcode.StatusSet, TransportFrames.Status(3 | 4), 4), AdminStatus.Einval, AdminQualifier.InvalidField);
        AssertRefused(Tvq.Execute(id, TransportOpcode.StatusSet, TransportFrames.Status(1), 4), AdminStatus.Einval, AdminQualifier.InvalidField);
        Tvq.StatusSet(id, 0);
        Assert.Equal(0, Tvq.StatusGet(id));
        Assert.Equal(UInt128.Zero, Tvq.DrvFeaturesGet(id));
        // A config write bumps the generation (the net config is read-only here: refused, no bump).
        uint generation = Tvq.GenerationGet(id);
        AssertRefused(Tvq.Execute(id, TransportOpcode.CfgWrite, TransportFrames.CfgWrite(0, [1, 2]), 4), AdminStatus.Einval, AdminQualifier.InvalidField);
        Assert.Equal(generation, Tvq.GenerationGet(id));
    }

    [Fact]
    public void While_a_vmm_drives_a_device_state_changing_commands_are_busy_and_reads_answer()
    {
        uint id = Tvq.DevCreate();
        string socket = Path.Combine(_backend.Directory, $"vdev{id}.sock");
        Assert.True(Eventually(() => _backend.Group.Transport!.Devices.Single().Endpoint?.Listening == true));
        using var vmm = new NetFrontEnd(socket);
        Assert.True(Eventually(() => _backend.Group.Transport!.Devices.Single().VmmAttached));
        AssertRefused(Tvq.Execute(id, TransportOpcode.StatusSet, TransportFrames.Status(0), 4), AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        AssertRefused(Tvq.Execute(id, TransportOpcode.VqSet, TransportFrames.VqSet(0, 64, 0, 0x10000, 0x11000, 0x12000), 4),
            AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        Assert.Equal(1u, Tvq.DevInfo(id).VirtioDeviceId);
        Assert.Equal(6, Tvq.CfgRead(id, 0, 6).Length);

        // Frames flow between the VMM-driven device and a VF.
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        vf1.PostRx(4);
        vmm.Send(NetFrontEnd.Frame(Vf1Mac, "02:56:56:01:00:01", "from the vmm"));
        Assert.Contains("from the vmm", System.Text.Encoding.ASCII.GetString(vf1.Receive(15_000).Frame));

        // Destroying it disconnects the VMM and removes the socket.
        Tvq.DevDestroy(id);
        Assert.True(Eventually(() => !File.Exists(socket)), "socket left behind");
        Assert.Empty(Tvq.DevList());
    }

    [Fact]
    public void Managed_devices_outlive_the_owner_driver_but_their_transport_state_does_not()
    {
        uint id = Tvq.DevCreate();
        var vdev = ManagedNetDriver.Start(_owner, id);
        Assert.NotEqual(0, Tvq.StatusGet(id));
        _owner.Dispose();
        vdev.Dispose(); // its commands fail quietly: the owner is gone
        using var next = OwnerDriver.Connect(_backend.Socket(0));
        Assert.Equal([id], next.Transport!.DevList());
        Assert.Equal(0, next.Transport.StatusGet(id));
        var info = next.Transport.Execute(id, TransportOpcode.DevInfo, default, 32);
        Assert.True(info.Ok, info.Describe());
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(info.Result.AsSpan(24))); // no window any more
    }
}
