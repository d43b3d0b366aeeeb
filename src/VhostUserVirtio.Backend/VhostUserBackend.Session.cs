using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Sessions;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend;

// A session carried across a restart of this process (a session keeper holds the connection and its
// descriptors meanwhile): captured after every change, rebuilt in the new process by replaying the
// front end's set-up through the same message handling, so a restored session is validated exactly
// like the original one.
public sealed partial class VhostUserBackend
{
    /// <summary>The session as it stands now (control loop).</summary>
    public SessionState CaptureSession()
    {
        string? notResumable =
            OwnerDriven ? "the group owner drives the device" :
            MemberFrozen ? "the group owner froze the device" :
            _log != null ? "a dirty log is set (a migration is under way)" :
            _transfer != null ? "a device state transfer is under way" :
            VirtioFeature.Has(_ackedFeatures, VirtioFeature.RingPacked) ? "packed rings do not record where they stand" :
            _memory.Current.Regions.Count > MessageHeader.MaxFds && (_ackedProtocol & ProtocolFeatures.ConfigureMemSlots) == 0
                ? "more memory regions than one SET_MEM_TABLE carries" : null;
        var queues = new List<KeptQueue>();
        foreach (var q in _queues)
        {
            if (q.Size == 0 && q.UserAddresses == null && q.Kick == null && q.Call == null && q.Err == null && !q.Enabled)
                continue;
            queues.Add(new KeptQueue(q.Index, q.Size, q.Base, q.Started, q.Enabled, q.UserAddresses, q.LogGuestAddress,
                q.Kick?.Descriptor, q.Call?.Descriptor, q.Err?.Descriptor));
        }
        return new SessionState
        {
            Features = _ackedFeatures,
            FeaturesSet = _featuresSet,
            Protocol = _ackedProtocol,
            Owned = _owned,
            Status = _status,
            Regions = _memory.Current.Regions.Select(r => new KeptRegion(r.GuestPhysicalAddress, r.Size, r.UserAddress, r.MmapOffset, r.Descriptor)).ToList(),
            Queues = queues,
            Inflight = _inflight is { } i ? new KeptInflight(i.Size, i.Offset, i.QueueCount, i.QueueSize, i.Descriptor) : null,
            NotResumable = notResumable,
        };
    }

    /// <summary>
    /// Whether this device's sessions are kept across restarts of the process (a session keeper):
    /// rings then record what they take and complete into an inflight buffer even when the front end
    /// never asked for one (QEMU's virtio-net does not), so a restarted process finishes or resubmits
    /// exactly the chains the dead one had in hand.
    /// </summary>
    public bool KeepsSessions { get; set; }

    /// <summary>Before the first ring starts: an inflight buffer of the back end's own when sessions are kept and the front end gave none.</summary>
    private void EnsureInflightForKeeping()
    {
        if (!KeepsSessions || _inflight != null || OwnerDriven || _ownerTransport != null ||
            VirtioFeature.Has(_ackedFeatures, VirtioFeature.RingPacked) || _queues.Any(q => q.Started))
            return;
        AdoptInflight(InflightRegion.Create(_queues.Length, _device.MaxQueueSize));
    }

    /// <summary>
    /// Rebuilds a session captured by another process: the front end's set-up is replayed as the
    /// messages it sent (with copies of the kept descriptors), up to but not including the kicks that
    /// start the rings (<see cref="StartRestoredRings"/>: every port of a switch must be back before
    /// any ring forwards what piled up meanwhile). Returns why it could not be restored (the device is
    /// then reset), or null. The descriptors in <paramref name="state"/> stay the caller's.
    /// </summary>
    public string? RestoreSession(SessionState state)
    {
        if (state.NotResumable is { } why)
            return why;
        try
        {
            if (state.Owned)
                Replay(FrontendRequest.SetOwner, []);
            Replay(FrontendRequest.SetProtocolFeatures, BitConverter.GetBytes((ulong)state.Protocol));
            if (state.FeaturesSet)
                Replay(FrontendRequest.SetFeatures, BitConverter.GetBytes(state.Features));
            if (state.Regions.Count > 0)
            {
                if ((state.Protocol & ProtocolFeatures.ConfigureMemSlots) != 0)
                    foreach (var r in state.Regions)
                        Replay(FrontendRequest.AddMemReg, SingleRegionPayload.Write(Describe(r)), r.Descriptor);
                else
                    Replay(FrontendRequest.SetMemTable, MemoryTablePayload.Write(state.Regions.Select(Describe).ToArray()),
                        state.Regions.Select(r => r.Descriptor).ToArray());
            }
            if ((state.Protocol & ProtocolFeatures.Status) != 0)
                Replay(FrontendRequest.SetStatus, BitConverter.GetBytes((ulong)state.Status));
            foreach (var q in state.Queues)
                RestoreQueue(q, state);
            // The rings resume from what the dead process recorded, not from their used index.
            if (state.Inflight is { } kept)
                AdoptInflight(InflightRegion.Open(kept.Descriptor.Duplicate(), kept.Size, kept.Offset, kept.Queues, kept.QueueSize,
                    _queues.Length, _device.MaxQueueSize, _memory.Policy.AllowUnsealed));
        }
        catch (Exception e) when (e is VhostUserException or GuestMemoryException)
        {
            Disconnected();
            return e.Message;
        }
        return null;
    }

    /// <summary>
    /// The second half of <see cref="RestoreSession"/>, in two passes over every restored device:
    /// first the rings the device only fills (<see cref="IVirtioDevice.WantsKicks"/> false: a net
    /// device's receive queues), then the rest, whose start forwards what piled up meanwhile, so it
    /// finds every receiver back. Giving a ring its kick descriptor starts it where its used ring
    /// stands; the last pass signals each ring once (a used element published just before the old
    /// process died may not have been). Returns why not (the device is then reset), or null.
    /// </summary>
    public string? StartRestoredRings(SessionState state, bool fillOnlyRings)
    {
        try
        {
            foreach (var q in state.Queues)
                if (q.Kick != null && q.Index < _queues.Length && _device.WantsKicks(q.Index) != fillOnlyRings)
                    Replay(FrontendRequest.SetVringKick, BitConverter.GetBytes((ulong)(uint)q.Index), q.Kick);
        }
        catch (VhostUserException e)
        {
            Disconnected();
            return e.Message;
        }
        if (fillOnlyRings)
            return null;
        foreach (var q in _queues)
            if (q.Started && q.Owner is { } worker)
                worker.Loop.Invoke(q.SignalCall);
        _logger.LogInformation("{Device}: session restored: {Regions} memory region(s), {Running} running ring(s)", _device.Name,
            state.Regions.Count, _queues.Count(q => q.Started));
        return null;
    }

    private static MemoryRegionDescription Describe(KeptRegion r) => new(r.GuestAddress, r.Size, r.UserAddress, r.MmapOffset);

    private void RestoreQueue(KeptQueue q, SessionState state)
    {
        uint index = (uint)q.Index;
        if (q.Size != 0)
            Replay(FrontendRequest.SetVringNum, Payload(new VringState(index, (uint)q.Size)));
        if (q.Addresses is { } a)
        {
            var addr = new VringAddress(index, q.LogAddress != null ? VringAddress.LogFlag : 0, a.Desc, a.Used, a.Avail, q.LogAddress ?? 0);
            var bytes = new byte[VringAddress.Size];
            addr.Write(bytes);
            Replay(FrontendRequest.SetVringAddr, bytes);
        }
        uint nextAvail = q.Running && q.Addresses is { } ring ? UsedIndexAt(ring.Used, q.Index) : q.Base;
        Replay(FrontendRequest.SetVringBase, Payload(new VringState(index, nextAvail)));
        if (q.Call != null)
            Replay(FrontendRequest.SetVringCall, BitConverter.GetBytes((ulong)index), q.Call);
        if (q.Err != null)
            Replay(FrontendRequest.SetVringErr, BitConverter.GetBytes((ulong)index), q.Err);
        if ((state.Protocol != ProtocolFeatures.None || VirtioFeature.Has(state.Features, VirtioFeature.VhostUserProtocolFeatures)) && q.Enabled)
            Replay(FrontendRequest.SetVringEnable, Payload(new VringState(index, 1)));
    }

    /// <summary>
    /// Where a split ring that ran resumes without an inflight buffer: its used index. Every chain
    /// taken before the restart was completed or is taken again (in order, as vhost-user front ends
    /// assume after a back end dies). With a buffer, the ring's start resumes from it instead.
    /// </summary>
    private uint UsedIndexAt(ulong usedUserAddress, int queue)
    {
        Span<byte> index = stackalloc byte[2];
        if (!_memory.Current.TryUserToGuest(usedUserAddress, out ulong gpa) || gpa > ulong.MaxValue - 2 || !_memory.Current.Read(gpa + 2, index))
            throw new VhostUserException(MessageErrorKind.BadMemory, $"queue {queue}: used ring at 0x{usedUserAddress:x} is not in the restored memory");
        return BinaryPrimitives.ReadUInt16LittleEndian(index);
    }

    private static byte[] Payload(VringState state)
    {
        var bytes = new byte[VringState.Size];
        state.Write(bytes);
        return bytes;
    }

    /// <summary>Handles one message of the replayed set-up; a refusal aborts the restore.</summary>
    private void Replay(FrontendRequest request, byte[] payload, params FileDescriptor[] fds)
    {
        var copies = new List<FileDescriptor>(fds.Length);
        foreach (var fd in fds)
            copies.Add(fd.Duplicate());
        LastRejection = null;
        var result = Handle(new Message(new MessageHeader((uint)request, MessageHeader.Version, (uint)payload.Length), payload, copies));
        if (LastRejection != null || result.CloseConnection)
            throw new VhostUserException(MessageErrorKind.InvalidState, $"replaying {request}: {LastRejection?.Detail ?? "refused"}");
    }
}
