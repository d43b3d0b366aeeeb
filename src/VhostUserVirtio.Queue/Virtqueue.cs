using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Queue;

/// <summary>
/// The device side of one virtqueue, whatever its layout: <see cref="SplitQueue"/> (VIRTIO 1.x 2.7)
/// or <see cref="PackedQueue"/> (2.8). Devices pop <see cref="DescriptorChain"/>s and push used
/// lengths through this class and never learn which layout the driver chose. Both layouts distrust
/// the guest in the same way: any violation marks the queue broken (<see cref="Fault"/>), after
/// which it pops and writes nothing.
///
/// The data path calls these members once per chain or per burst: virtual calls on a sealed
/// subclass, no interface dispatch, nothing allocated.
///
/// Not thread-safe: one thread (the worker that owns the queue) uses it at a time.
/// </summary>
public abstract class Virtqueue
{
    /// <summary>Chains one <see cref="Drain{THandler}"/> call handles at most (DPDK dequeues bursts of 32).</summary>
    public const int DefaultBudget = 64;

    private protected Virtqueue()
    {
    }

    /// <summary>True for the packed layout (VIRTIO_F_RING_PACKED).</summary>
    public abstract bool IsPacked { get; }

    public abstract ushort Size { get; }
    /// <summary>The memory snapshot the ring currently works against.</summary>
    public abstract GuestMemory Memory { get; }
    /// <summary>Guest physical address of the descriptor table (the packed ring itself).</summary>
    public ulong DescriptorTable { get; protected set; }
    /// <summary>The driver area: the split ring's avail ring, the packed ring's driver event suppression.</summary>
    public ulong AvailableRing { get; protected set; }
    /// <summary>The device area: the split ring's used ring, the packed ring's device event suppression.</summary>
    public ulong UsedRing { get; protected set; }

    /// <summary>
    /// Index of the next available entry to consume. Split: free-running, wraps at 2^16. Packed:
    /// the slot (0..size-1), without the wrap counter.
    /// </summary>
    public abstract ushort NextAvail { get; set; }

    /// <summary>Index of the next used entry to fill (split: free-running; packed: the slot).</summary>
    public ushort NextUsed { get; protected set; }

    /// <summary>
    /// The ring's position as vhost-user's GET_VRING_BASE reports it. Split: the next avail index.
    /// Packed: bits 0-14 the next avail slot, bit 15 its wrap counter; bits 16-30 and 31 the same
    /// for the used side (QEMU's encoding; DPDK reads only the low half).
    /// </summary>
    public virtual uint VringBase => NextAvail;

    /// <summary>VIRTIO_F_RING_EVENT_IDX negotiated.</summary>
    public bool EventIdx { get; set; }
    /// <summary>VIRTIO_F_INDIRECT_DESC negotiated.</summary>
    public bool IndirectAllowed { get; set; }

    /// <summary>Why the queue is broken, or null while it is healthy.</summary>
    public RingError? Fault { get; protected set; }
    public abstract bool IsReady { get; }

    /// <summary>Chains popped since the queue was set up.</summary>
    public ulong ChainsPopped { get; protected set; }

    /// <summary>The dirty log buffer writes are marked in, or null while logging is off.</summary>
    public abstract DirtyLog? Log { get; }
    /// <summary>Where device-area writes are logged (guest physical), or null when they are not.</summary>
    public abstract ulong? UsedLogAddress { get; }

    /// <summary>
    /// Turns dirty logging on or off: buffer writes are marked in <paramref name="log"/>, and with
    /// <paramref name="usedLogAddress"/> the device's ring writes too. Null turns logging off.
    /// </summary>
    public abstract void SetDirtyLog(DirtyLog? log, ulong? usedLogAddress);

    /// <summary>Copies bytes into guest memory, marking them in the dirty log. False if any byte is unmapped.</summary>
    public abstract bool WriteGuest(ulong gpa, ReadOnlySpan<byte> source);

    /// <summary>Places the ring (size, descriptor table, driver area, device area); on failure it stays unready.</summary>
    public abstract RingError? Configure(GuestMemory memory, RingPlacement placement);

    /// <inheritdoc cref="Configure(GuestMemory, RingPlacement)"/>
    public RingError? Configure(GuestMemory memory, int size, ulong descTable, ulong availRing, ulong usedRing) =>
        Configure(memory, new RingPlacement(size, descTable, availRing, usedRing));

    /// <summary>Re-resolves the ring pointers against a new memory snapshot (after a memory table change).</summary>
    public abstract RingError? Remap(GuestMemory memory);

    /// <summary>Marks the queue broken; it stays broken until reconfigured.</summary>
    public void Break(RingError reason) => Fault ??= reason;

    public void Break(RingErrorKind kind, string detail) => Break(new RingError(kind, detail));

    /// <summary>Clears a fault, the position and the pointers; used when the front end sets the ring up anew.</summary>
    public abstract void Reset();

    /// <summary>
    /// Pops and validates the next chain. Returns null when none is available or the queue is broken
    /// (check <see cref="Fault"/>). The returned chain is reused by the next pop.
    /// </summary>
    public abstract DescriptorChain? Pop();

    /// <summary>
    /// Gives back the last <paramref name="count"/> popped chains unconsumed, as if never popped. Only
    /// valid before PushUsed for them; they are validated again when popped again.
    /// </summary>
    public abstract void Rewind(int count);

    /// <summary>
    /// Returns a chain (by its head, the packed ring's buffer id) with the number of bytes written
    /// into it. With <paramref name="publish"/> false the driver may see it only at <see cref="PublishUsed"/>.
    /// </summary>
    public abstract void PushUsed(ushort head, uint length, bool publish = true);

    /// <summary>Makes the used entries pushed so far visible to the driver, in one burst.</summary>
    public abstract void PublishUsed();

    /// <summary>True when the driver has published buffers not yet popped (a cheap look for pollers).</summary>
    public abstract bool HasPending { get; }

    /// <summary>Whether the driver wants a used-buffer notification now (publishes first).</summary>
    public abstract bool NeedsNotification();

    /// <summary>Asks the driver not to kick (we are about to poll the ring anyway).</summary>
    public abstract void DisableNotification();

    /// <summary>
    /// Asks the driver to kick again when it adds buffers, then re-checks the ring. Returns true when
    /// buffers arrived meanwhile (the caller must keep processing, or a kick could be lost).
    /// </summary>
    public abstract bool EnableNotification();

    /// <summary>
    /// Pops available chains through <paramref name="handler"/>, at most <paramref name="budget"/> of
    /// them, and returns each with the length the handler wrote; re-enables kicks with a re-check
    /// unless <paramref name="rearm"/> is false or the budget ran out. Allocates nothing.
    /// </summary>
    public abstract DrainResult Drain<THandler>(ref THandler handler, bool rearm = true, int budget = DefaultBudget) where THandler : struct, IChainHandler;
}
