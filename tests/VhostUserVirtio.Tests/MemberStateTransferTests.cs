using System.Buffers;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Group;
using VhostUserVirtio.Group.Migration;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A member's state captured from a live member (its device model, filters, trust, link, MSI-X
/// vectors, counters and rings) and applied to another member with its rings stopped; a stream
/// that is refused changes nothing on the member.
/// </summary>
[Trait("tier", "unit")]
public sealed class MemberStateTransferTests : IDisposable
{
    private readonly GroupBackend _backend = new(vfs: 2);

    public void Dispose() => _backend.Dispose();

    private DeviceGroup Group => _backend.Group;

    private T OnWorker<T>(Func<T> func) => Group.DataPath.Loop.Invoke(func);

    private NetMemberState Capture(int id)
    {
        var (error, state) = OnWorker(() => (NetMemberMigration.Capture(_backend.Member(id), Group.Msix, out var s), s));
        Assert.Null(error);
        return state!;
    }

    private DeviceStateError? Apply(int id, NetMemberState state)
    {
        var m = _backend.Member(id);
        return OnWorker(() => NetMemberMigration.Apply(state, m.Device, m.Endpoint.Backend.Queues, new MemberVectors(Group.Msix, id - 1)));
    }

    private DeviceStateError? Restore(int id, byte[] stream)
    {
        var m = _backend.Member(id);
        return OnWorker(() => NetMemberMigration.Restore(new ReadOnlySequence<byte>(stream), m.Device, m.Endpoint.Backend.Queues,
            new MemberVectors(Group.Msix, id - 1), out _));
    }

    private static byte[] Encode(NetMemberState state)
    {
        using var sequence = DevicePartsWriter.Build(state);
        return sequence.AsReadOnlySequence.ToArray();
    }

    private static readonly Mac Moved = Mac.Parse("02:56:56:00:00:11");

    /// <summary>vf1 with a driver, traffic, and every carried setting away from a fresh member's.</summary>
    private NetFrontEnd BusyVf1(int frames)
    {
        var vf1 = new NetFrontEnd(_backend.Socket(1));
        var net = _backend.Member(1).Device;
        OnWorker(() =>
        {
            Span<byte> mac = stackalloc byte[6];
            Moved.Write(mac);
            Assert.Equal(VirtioNet.Ok, NetControl.Apply(net, NetMemberControl.TrustClass, 0, [1]));
            Assert.Equal(VirtioNet.Ok, NetControl.Apply(net, VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet, mac));
            Assert.Equal(VirtioNet.Ok, NetControl.Apply(net, VirtioNet.CtrlRx, VirtioNet.CtrlRxPromisc, [0]));
            Assert.Equal(VirtioNet.Ok, NetControl.Apply(net, VirtioNet.CtrlRx, VirtioNet.CtrlRxNoBcast, [1]));
            byte[] tables = [1, 0, 0, 0, 2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 1, 0, 0x5e, 0, 0, 1, 0x33, 0x33, 0, 0, 0, 1];
            Assert.Equal(VirtioNet.Ok, NetControl.Apply(net, VirtioNet.CtrlMac, VirtioNet.CtrlMacTableSet, tables));
            Assert.True(Group.Msix.TryAssign(0, 7));
            return true;
        });
        var frame = new byte[60];
        Mac.Broadcast.Write(frame);
        Moved.Write(frame.AsSpan(6));
        for (int i = 0; i < frames; i++)
            vf1.Send(frame);
        OnWorker(() => NetControl.Apply(net, NetMemberControl.LinkClass, 0, [0]));
        return vf1;
    }

    [Fact]
    public void A_members_state_applied_to_another_member_is_what_that_member_then_holds()
    {
        using var vf1 = BusyVf1(frames: 3);
        var source = Capture(1);
        Assert.True(source.Trusted);
        Assert.False(source.LinkUp);
        Assert.Equal(Moved, source.Mac);
        Assert.Equal(7, source.MsixVectors);
        Assert.Equal(3, source.Counters.TxPackets);
        Assert.Single(source.UnicastTable);
        Assert.Equal(2, source.MulticastTable.Length);
        Assert.True(source.Modes.NoBroadcast && !source.Modes.Promiscuous);
        Assert.NotEqual(0UL, source.DriverFeatures);
        Assert.True(source.Queues[1] is { Size: 256, Enabled: true });

        var before = Capture(2);
        Assert.NotEqual(before with { Queues = source.Queues, Status = source.Status }, source);
        Assert.Null(Apply(2, source));
        var after = Capture(2);
        // Status, vectors and ring placement belong to the transport that resumes the member, not the device model.
        Assert.Equal(source with { Queues = after.Queues, Status = after.Status }, after);
        Assert.Equal(7, Group.Msix.Assigned(1));
        Assert.Equal(3, _backend.Member(2).Device.Counters.TxPackets);
    }

    [Fact]
    public void A_restored_ring_resumes_at_the_used_index_in_guest_memory_which_is_where_the_source_stopped()
    {
        using var vf1 = BusyVf1(frames: 5);
        var state = Capture(1);
        var ring = _backend.Member(1).Endpoint.Backend.Queues[1].Ring;
        ushort sourceNext = OnWorker(() => ring.NextAvail);
        Assert.Equal(5, sourceNext);
        Assert.Null(RingResume.NextAvail(_backend.Member(1).Endpoint.Backend.Memory, state.Queues[1], out ushort derived));
        Assert.Equal(sourceNext, derived);
        Assert.Equal(new Queue.RingPlacement(256, ring.DescriptorTable, ring.AvailableRing, ring.UsedRing), RingResume.Placement(state.Queues[1]));
    }

    [Fact]
    public void A_state_is_not_applied_to_a_member_whose_rings_run_and_nothing_changes()
    {
        using var vf1 = BusyVf1(frames: 1);
        var running = Capture(1);
        var other = running with { Trusted = false, LinkUp = true, Counters = MemberCounters.Zero };
        var error = Apply(1, other);
        Assert.Equal(DeviceStateErrorKind.RingsRunning, error?.Kind);
        Assert.Equal(running, Capture(1));
    }

    [Fact]
    public void Truncated_reordered_or_foreign_streams_are_refused_and_the_member_keeps_its_state()
    {
        using var vf1 = BusyVf1(frames: 2);
        var stream = Encode(Capture(1));
        var before = Capture(2);

        // Truncated anywhere, two parts swapped, a part repeated, and parts from a device with more queues.
        int headerAndValue = 16 + 8;
        var swapped = stream[headerAndValue..(2 * headerAndValue)].Concat(stream[..headerAndValue]).Concat(stream[(2 * headerAndValue)..]).ToArray();
        var repeated = stream[..headerAndValue].Concat(stream).ToArray();
        var shape = NetMemberShape.Of(_backend.Member(2).Device, Group.Msix.PerVfMax);
        var wider = Encode(Capture(1) with { Queues = [.. Capture(1).Queues, VirtqueueState.Unused, VirtqueueState.Unused] });
        var cases = new List<(byte[] Stream, DeviceStateErrorKind[] Kinds)>
        {
            (swapped, [DeviceStateErrorKind.OutOfOrder]),
            (repeated, [DeviceStateErrorKind.Duplicate]),
            (wider, [DeviceStateErrorKind.ShapeMismatch]),
        };
        for (int cut = 0; cut < stream.Length; cut += 7)
            cases.Add((stream[..cut], [DeviceStateErrorKind.Truncated, DeviceStateErrorKind.Missing]));

        foreach (var (bad, kinds) in cases)
        {
            var error = Restore(2, bad);
            Assert.NotNull(error);
            Assert.Contains(error!.Value.Kind, kinds);
        }
        Assert.Equal(before, Capture(2));
        Assert.Equal(4, Group.Msix.Assigned(1));

        // The stream itself was fine.
        Assert.Null(Restore(2, stream));
        Assert.True(Capture(2).Trusted);
        Assert.Equal(shape.QueueCount, Capture(2).Queues.Length);
    }

    [Fact]
    public void A_state_whose_vectors_the_msix_pool_cannot_cover_is_refused_and_nothing_changes()
    {
        using var vf1 = BusyVf1(frames: 1);
        var state = Capture(1) with { MsixVectors = 64 }; // the pool has 16 for both VFs
        var before = Capture(2);
        Assert.Equal(DeviceStateErrorKind.NoResource, Apply(2, state)?.Kind);
        Assert.Equal(before, Capture(2));
    }
}
