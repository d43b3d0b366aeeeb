using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Immutable;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Group.Migration;

/// <summary>
/// The registers of whichever transport drives the member (its own front end, the legacy interface,
/// later the transport virtqueue): device status and MSI-X vector numbers. The device model does not
/// hold them, so the transport hands them over. Queue vectors missing from the array read as NO_VECTOR.
/// </summary>
public readonly record struct TransportRegisters(byte Status, ushort ConfigVector, ImmutableArray<ushort> QueueVectors)
{
    public static TransportRegisters WithoutVectors(byte status) => new(status, DeviceParts.NoVector, []);

    public ushort QueueVector(int index) =>
        !QueueVectors.IsDefault && index < QueueVectors.Length ? QueueVectors[index] : DeviceParts.NoVector;
}

/// <summary>
/// Where a member's MSI-X vector count lives: the owner's pool entry of a VF (0-based index), or
/// nowhere (the owner itself, whose count is not managed; it is carried as 0).
/// </summary>
public readonly record struct MemberVectors(MsixPool? Pool, int Index)
{
    public int Count => Pool?.Assigned(Index) ?? 0;
    public int Max => Pool?.PerVfMax ?? 0;
}

/// <summary>
/// Captures a live member's state and applies a state to another member, through the device model
/// (<see cref="NetDevice"/>, its <see cref="NetReceiveFilter"/> and counters, the MSI-X pool) and the
/// member's rings. Both run on the worker that owns the member's rings (the group's worker, where
/// admin commands run), so nothing moves underneath them.
/// </summary>
public static class NetMemberMigration
{
    /// <summary>
    /// Reads the member's state. Refused (<see cref="DeviceStateErrorKind.InFlight"/>) while a ring has
    /// buffers taken and not written back: the ring positions are carried only implicitly (next avail =
    /// used index), which holds only when every observed buffer has been used. A broken ring is carried
    /// as DEVICE_NEEDS_RESET in the status.
    /// </summary>
    public static DeviceStateError? Capture(NetDevice net, IReadOnlyList<DeviceQueue> queues, TransportRegisters transport, MemberVectors vectors,
        out NetMemberState? state)
    {
        state = null;
        if (queues.Count != net.QueueCount)
            return new(DeviceStateErrorKind.ShapeMismatch, $"{queues.Count} rings for a device of {net.QueueCount} queues");
        byte status = transport.Status;
        var rings = ImmutableArray.CreateBuilder<VirtqueueState>(queues.Count);
        for (int i = 0; i < queues.Count; i++)
        {
            var q = queues[i];
            var ring = q.Ring;
            bool placed = q.Started || ring.IsReady || ring.Fault != null;
            if (!placed)
            {
                rings.Add(VirtqueueState.Unused with { Vector = transport.QueueVector(i) });
                continue;
            }
            if (ring.Fault != null)
                status |= DeviceNeedsReset;
            else if (ring.NextAvail != ring.NextUsed)
                return new(DeviceStateErrorKind.InFlight,
                    $"queue {i} has {(ushort)(ring.NextAvail - ring.NextUsed)} buffer(s) taken but not used (avail {ring.NextAvail}, used {ring.NextUsed})");
            rings.Add(new VirtqueueState(ring.Size, transport.QueueVector(i), q.Enabled, ring.DescriptorTable, ring.AvailableRing, ring.UsedRing));
        }

        var filter = net.Filter;
        var c = net.Counters;
        var drops = new long[MemberCounters.DropReasons];
        for (int r = 0; r < drops.Length; r++)
            drops[r] = c.Drops((DropReason)r);
        state = new NetMemberState
        {
            DeviceFeatures = net.Features,
            DriverFeatures = net.DriverFeatures,
            ConfigVector = transport.ConfigVector,
            Status = status,
            Queues = rings.MoveToImmutable(),
            Mac = net.Mac,
            UnicastTable = ToMacs(filter.UnicastTable),
            MulticastTable = ToMacs(filter.MulticastTable),
            Modes = new ReceiveModes(filter.Promiscuous, filter.AllMulticast, filter.AllUnicast, filter.NoMulticast, filter.NoUnicast, filter.NoBroadcast),
            ActivePairs = (ushort)net.ActivePairs,
            LinkUp = net.LinkUp,
            Trusted = net.Trusted,
            MsixVectors = (ushort)vectors.Count,
            Counters = new MemberCounters(c.TxPackets, c.TxBytes, c.RxPackets,
                c.RxBytes, c.MacsNotLearned, ImmutableArray.Create(drops)),
        };
        return null;
    }

    /// <summary>Reads a member of the group: its front end's status, no vector numbers (vhost-user has none).</summary>
    public static DeviceStateError? Capture(GroupMember member, MsixPool pool, out NetMemberState? state) =>
        Capture(member.Device, member.Endpoint.Backend.Queues, TransportRegisters.WithoutVectors(member.Endpoint.Backend.Status),
            member.IsOwner ? new MemberVectors(null, 0) : new MemberVectors(pool, member.Id - 1), out state);

    /// <summary>
    /// A member's state as its device parts stream: the bytes DEV_PARTS_GET, DEV_CTX_READ and a
    /// DEVICE_STATE save carry. Null with the reason while it cannot be captured (buffers in flight).
    /// </summary>
    public static DeviceStateError? CaptureParts(GroupMember member, MsixPool pool, out byte[]? parts)
    {
        parts = null;
        if (Capture(member, pool, out var state) is { } refused)
            return refused;
        using var built = DevicePartsWriter.Build(state!);
        parts = built.AsReadOnlySequence.ToArray();
        return null;
    }

    /// <summary>
    /// Applies <paramref name="state"/> to a member whose rings are stopped: driver features, MAC,
    /// filters and receive modes, queue pairs, link, trust, MSI-X vector count and counters. The
    /// state is first checked completely against this device (the same rules as a received stream,
    /// plus the MSI-X pool and the rings being stopped); if anything is refused nothing changes. The
    /// transport that resumes the member takes status, vectors and queue configuration from the
    /// state, and each ring's position from guest memory (<see cref="RingResume"/>).
    /// </summary>
    public static DeviceStateError? Apply(NetMemberState state, NetDevice net, IReadOnlyList<DeviceQueue> queues, MemberVectors vectors)
    {
        if (Check(state, net, queues, vectors) is { } refused)
            return refused;

        net.SetDriverFeatures(state.DriverFeatures);
        Span<byte> data = stackalloc byte[6];
        if (state.Mac is { } mac)
        {
            mac.Write(data);
            NetControl.Apply(net, VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet, data);
        }
        var filter = net.Filter;
        filter.SetTables(TableData(state));
        (filter.Promiscuous, filter.AllMulticast, filter.AllUnicast, filter.NoMulticast, filter.NoUnicast, filter.NoBroadcast) =
            (state.Modes.Promiscuous, state.Modes.AllMulticast, state.Modes.AllUnicast, state.Modes.NoMulticast, state.Modes.NoUnicast, state.Modes.NoBroadcast);
        BinaryPrimitives.WriteUInt16LittleEndian(data, state.ActivePairs);
        NetControl.Apply(net, VirtioNet.CtrlMq, VirtioNet.CtrlMqVqPairsSet, data[..2]);
        data[0] = state.LinkUp ? (byte)1 : (byte)0;
        NetControl.Apply(net, NetMemberControl.LinkClass, 0, data[..1]);
        data[0] = state.Trusted ? (byte)1 : (byte)0;
        NetControl.Apply(net, NetMemberControl.TrustClass, 0, data[..1]);
        vectors.Pool?.TryAssign(vectors.Index, state.MsixVectors);

        var c = net.Counters;
        var s = state.Counters;
        (c.TxPackets, c.TxBytes, c.RxPackets, c.RxBytes, c.MacsNotLearned) = (s.TxPackets, s.TxBytes, s.RxPackets, s.RxBytes, s.MacsNotLearned);
        for (int r = 0; r < MemberCounters.DropReasons; r++)
            c.SetDrops((DropReason)r, s.Drops[r]);
        return null;
    }

    /// <summary>
    /// Reads a parts stream for this member and applies it: the whole stream is checked first, so a
    /// truncated, reordered or foreign stream changes nothing. Returns the state applied.
    /// </summary>
    public static DeviceStateError? Restore(in ReadOnlySequence<byte> stream, NetDevice net, IReadOnlyList<DeviceQueue> queues, MemberVectors vectors,
        out NetMemberState? state)
    {
        if (DevicePartsReader.TryRead(stream, NetMemberShape.Of(net, vectors.Max), out state) is { } refused)
            return refused;
        if (Apply(state!, net, queues, vectors) is { } notApplied)
        {
            state = null;
            return notApplied;
        }
        return null;
    }

    /// <summary>Everything <see cref="Apply"/> needs to hold, checked before any change.</summary>
    private static DeviceStateError? Check(NetMemberState state, NetDevice net, IReadOnlyList<DeviceQueue> queues, MemberVectors vectors)
    {
        for (int i = 0; i < queues.Count; i++)
            if (queues[i].Started && !queues[i].Paused)
                return new(DeviceStateErrorKind.RingsRunning, $"queue {i} is running; a state is applied only with the rings stopped");
        if (state.Queues.IsDefault || state.Counters.Drops.IsDefault || state.Counters.Drops.Length != MemberCounters.DropReasons ||
            state.UnicastTable.IsDefault || state.MulticastTable.IsDefault ||
            state.UnicastTable.Length > DevicePartsWriter.MaxTableEntries || state.MulticastTable.Length > DevicePartsWriter.MaxTableEntries)
            return new(DeviceStateErrorKind.InvalidValue, "the state is incomplete or its tables are too large");
        if (net.Mac != null && state.Mac == null)
            return new(DeviceStateErrorKind.ShapeMismatch, "the state has no MAC for a device that has one");
        // One set of rules for a state however it was made: it must survive the reader's checks for this device.
        using (var stream = DevicePartsWriter.Build(state))
        {
            if (DevicePartsReader.TryRead(stream.AsReadOnlySequence, NetMemberShape.Of(net, vectors.Max), out _) is { } refused)
                return refused;
        }
        if (vectors.Pool is { } pool && (state.MsixVectors == 0 || !pool.CanAssign(vectors.Index, state.MsixVectors)))
            return new(DeviceStateErrorKind.NoResource, $"the MSI-X pool cannot give the member {state.MsixVectors} vector(s)");
        return null;
    }

    /// <summary>The MAC_TABLE_SET command data of the state's tables.</summary>
    private static byte[] TableData(NetMemberState state)
    {
        var data = new byte[8 + 6 * (state.UnicastTable.Length + state.MulticastTable.Length)];
        int at = 0;
        foreach (var table in new[] { state.UnicastTable, state.MulticastTable })
        {
            BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(at), (uint)table.Length);
            at += 4;
            foreach (var mac in table)
            {
                mac.Write(data.AsSpan(at));
                at += 6;
            }
        }
        return data;
    }

    private static ImmutableArray<Mac> ToMacs(ReadOnlySpan<ulong> values)
    {
        var macs = ImmutableArray.CreateBuilder<Mac>(values.Length);
        foreach (ulong v in values)
            macs.Add(new Mac(v));
        return macs.MoveToImmutable();
    }

    private const byte DeviceNeedsReset = 0x40;
}

/// <summary>
/// Ring positions on restore, as VIRTIO 1.4 recommends: a stopped source wrote back every buffer it
/// took, so a split ring resumes at next avail = the used index found in guest memory.
/// </summary>
public static class RingResume
{
    /// <summary>Where the restored queue's rings are (guest physical addresses in the member's memory).</summary>
    public static RingPlacement Placement(VirtqueueState queue) => new(queue.Size, queue.Descriptors, queue.Driver, queue.Device);

    /// <summary>The next avail index of a restored queue: used->idx in <paramref name="memory"/>. Refused when the used ring is not mapped.</summary>
    public static DeviceStateError? NextAvail(GuestMemory memory, VirtqueueState queue, out ushort nextAvail)
    {
        nextAvail = 0;
        if (queue.Size == 0)
            return null;
        Span<byte> index = stackalloc byte[2];
        if (queue.Device > ulong.MaxValue - 2 || !memory.Read(queue.Device + 2, index))
            return new(DeviceStateErrorKind.InvalidValue, $"used ring at 0x{queue.Device:x} is not in the member's memory");
        nextAvail = BinaryPrimitives.ReadUInt16LittleEndian(index);
        return null;
    }
}
