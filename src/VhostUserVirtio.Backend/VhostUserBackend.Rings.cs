using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Backend;

// Ring lifecycle (vhost-user.rst "Ring states"): a ring starts when it has a size, addresses and a
// kick descriptor; GET_VRING_BASE stops it. A started ring belongs to a worker, so every change to
// it goes through that worker's loop.
public sealed partial class VhostUserBackend
{
    private DeviceQueue QueueAt(uint index) =>
        index < (uint)_queues.Length
            ? _queues[index]
            : throw new VhostUserException(MessageErrorKind.IndexOutOfRange, $"queue index {index} is out of range (device has {_queues.Length} queues)");

    private void SetVringNum(VringState state)
    {
        var q = QueueAt(state.Index);
        if (q.Started)
            throw new VhostUserException(MessageErrorKind.InvalidState, $"queue {state.Index} is running; stop it before resizing");
        if (state.Num == 0 || state.Num > (uint)_device.MaxQueueSize || (state.Num & (state.Num - 1)) != 0)
            throw new VhostUserException($"queue size {state.Num} is not a power of two in 1..{_device.MaxQueueSize}");
        q.Size = (int)state.Num;
    }

    private void SetVringBase(VringState state)
    {
        var q = QueueAt(state.Index);
        if (q.Started)
            throw new VhostUserException(MessageErrorKind.InvalidState, $"queue {state.Index} is running; stop it before setting its base");
        // A packed ring's base carries its avail slot in bits 0-14 and the wrap counter in bit 15; QEMU
        // adds the used side in bits 16-31, which DPDK ignores and so do we (a stopped ring has
        // nothing in flight: used resumes where avail does).
        bool packed = VirtioFeature.Has(_ackedFeatures, VirtioFeature.RingPacked);
        if (!packed && state.Num > ushort.MaxValue)
            throw new VhostUserException($"split-ring base 0x{state.Num:x} has reserved bits set");
        if (packed && (state.Num & (PackedRing.WrapBit - 1)) >= (uint)Math.Max(q.Size, 1))
            throw new VhostUserException($"packed-ring base 0x{state.Num:x} names a slot outside the queue of size {q.Size}");
        q.Base = state.Num;
    }

    private void SetVringAddr(VringAddress addr)
    {
        var q = QueueAt(addr.Index);
        if ((addr.Flags & ~VringAddress.LogFlag) != 0)
            throw new VhostUserException($"unknown vring address flags 0x{addr.Flags:x}");
        // log_guest_addr is a guest physical address that need not be in the memory table (the log
        // covers it, or the write is counted as unlogged): nothing to check here.
        ulong? logAt = (addr.Flags & VringAddress.LogFlag) != 0 ? addr.Log : null;
        if (q.Started && q.UserAddresses == (addr.Descriptor, addr.Available, addr.Used))
        {
            // QEMU switching dirty logging on a running ring: the ring stays where it is and keeps running.
            SetRingLog(q, logAt);
            return;
        }
        // A running ring moves: take it back, re-place it at the new addresses, hand it out again.
        bool wasStarted = q.Started;
        if (wasStarted)
        {
            q.Base = StopQueue(q);
        }
        q.UserAddresses = (addr.Descriptor, addr.Available, addr.Used);
        q.LogGuestAddress = logAt;
        if (wasStarted)
            TryStart(q);
    }

    private byte[] GetVringBase(VringState state)
    {
        var q = QueueAt(state.Index);
        uint next = q.Started ? StopQueue(q) : q.Base;
        q.Base = next;
        // Like libvhost-user: a stopped ring drops its kick and call; a restart sends new ones.
        q.Kick?.Dispose();
        q.Kick = null;
        q.Call?.Dispose();
        q.Call = null;
        var reply = new byte[VringState.Size];
        new VringState(state.Index, next).Write(reply);
        _logger.LogDebug("{Device}: queue {Queue} stopped at ring base 0x{Next:x}", _device.Name, state.Index, next);
        return reply;
    }

    private void SetVringFile(Message m)
    {
        ulong value = m.PayloadU64;
        string? problem = VringFile.Problem(value);
        if (problem != null)
            throw new VhostUserException(problem);
        var q = QueueAt((uint)(value & VringFile.IndexMask));
        EventFd? fd = (value & VringFile.NoFdFlag) != 0 ? null : EventFd.AdoptPeer(m.TakeFd(0), out string? refusal) ?? throw new VhostUserException(refusal!);

        switch (m.Request)
        {
            case FrontendRequest.SetVringKick when OwnerDriven:
                // The member's doorbell (LEGACY_NOTIFY_INFO): a running owner-driven ring listens to the new one.
                ReplaceOnWorker(q, () => q.SwapKick(fd));
                break;
            case FrontendRequest.SetVringKick:
                if (q.Started)
                    q.Base = StopQueue(q);
                q.Kick?.Dispose();
                q.Kick = fd;
                if (fd == null)
                    _logger.LogLimited(_refusalLog, LogLevel.Warning, "{Device}: queue {Queue} given no kick descriptor; polling mode is not supported, the ring stays stopped", _device.Name, q.Index);
                else
                    TryStart(q);
                break;
            case FrontendRequest.SetVringCall:
                // Under the ring's gate: another worker delivering into it may be signalling the old one.
                ReplaceOnWorker(q, () => { using (q.Gate.Exclusive()) { var old = q.Call; q.Call = fd; return old; } });
                break;
            default:
                ReplaceOnWorker(q, () => { using (q.Gate.Exclusive()) { var old = q.Err; q.Err = fd; return old; } });
                break;
        }
    }

    /// <summary>
    /// Swaps one of a ring's descriptors where the ring's users are: on its worker while it runs (or
    /// the pinned worker, where owner-driven rings and other ports' deliveries run), else here. The
    /// old descriptor is closed afterwards, once nothing can use it.
    /// </summary>
    private void ReplaceOnWorker(DeviceQueue q, Func<EventFd?> swap)
    {
        var worker = q.Owner ?? _pinnedWorker;
        var old = worker != null ? worker.Loop.Invoke(swap) : swap();
        old?.Dispose();
    }

    private void SetVringEnable(VringState state)
    {
        var q = QueueAt(state.Index);
        if (state.Num > 1)
            throw new VhostUserException($"SET_VRING_ENABLE value {state.Num} is neither 0 nor 1");
        SetEnabled(q, state.Num == 1);
    }

    private void SetEnabled(DeviceQueue q, bool enabled)
    {
        if (q.Owner is { } worker)
            worker.Loop.Invoke(() =>
            {
                q.Enabled = enabled;
                if (enabled)
                    q.Process(); // buffers may have arrived while it was disabled
            });
        else
            q.Enabled = enabled;
    }

    /// <summary>
    /// Starts the ring if it has everything it needs (size, addresses, kick, memory); otherwise it
    /// waits for the missing piece. The start itself runs on the worker (<see cref="DeviceQueue.Start"/>,
    /// the same sequence the owner's transports use), with the current snapshot: a later memory change
    /// is posted to that worker after this, so the snapshot stays mapped while the ring uses it.
    /// </summary>
    private void TryStart(DeviceQueue q)
    {
        if (OwnerDriven || q.Started || q.Kick == null || q.UserAddresses is not { } ua || q.Size == 0)
            return;
        var memory = _memory.Current;
        if (memory.Regions.Count == 0)
        {
            WarnRingWithoutMemory(q); // legal for now (PublishMemory retries), but a front end may never send any
            return;
        }
        if (!TryDriveFromFrontEnd())
            return; // the owner claimed the device meanwhile
        EnsureInflightForKeeping();
        if (!memory.TryUserToGuest(ua.Desc, out ulong desc) || !memory.TryUserToGuest(ua.Avail, out ulong avail) ||
            !memory.TryUserToGuest(ua.Used, out ulong used))
        {
            q.FailToStart(new RingError(RingErrorKind.RingOutsideMemory,
                $"ring addresses (desc 0x{ua.Desc:x}, avail 0x{ua.Avail:x}, used 0x{ua.Used:x}) are not in the memory table"));
            return;
        }
        var placement = new RingPlacement(q.Size, desc, avail, used);
        var worker = PlacementOf(q.Index) ?? _workers.Next();
        ulong features = _ackedFeatures;
        uint nextAvail = q.Base;
        var log = ActiveLog;
        ulong? usedLogAt = q.LogGuestAddress;
        if (worker.Loop.Invoke(() => q.Start(worker, memory, placement, features, nextAvail, transport: null, log, usedLogAt)) is { } error)
        {
            q.FailToStart(error);
            return;
        }
        _logger.LogDebug("{Device}: queue {Queue} started on {Worker} ({Placement}, avail {Avail})",
            _device.Name, q.Index, worker.Loop.Name, placement, nextAvail);
    }

    /// <summary>Takes a running ring back from its worker; returns its base (<see cref="Virtqueue.VringBase"/>).</summary>
    private uint StopQueue(DeviceQueue q)
    {
        if (!q.Started || q.Owner is not { } worker)
            return q.Base;
        // Stopped on the worker, so no delivery can touch the ring after its base was read.
        return worker.Loop.Invoke(q.Stop);
    }

    private void ResetQueue(DeviceQueue q)
    {
        StopQueue(q);
        q.Kick?.Dispose();
        q.Call?.Dispose();
        q.Err?.Dispose();
        q.Kick = q.Call = q.Err = null;
        q.UserAddresses = null;
        q.LogGuestAddress = null;
        q.Size = 0;
        q.Base = 0;
        q.Enabled = false;
        q.Ring.Reset();
    }
}
