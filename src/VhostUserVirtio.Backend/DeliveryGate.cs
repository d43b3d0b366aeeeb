namespace VhostUserVirtio.Backend;

/// <summary>
/// Who may touch a receive ring at a time. Its owning worker delivers into it without a lock as long
/// as no other worker ever has (the common case: each worker delivers into the queue pair it serves,
/// like OVS's static per-PMD transmit queues). Once another worker must deliver into it (a
/// destination with fewer queue pairs than there are workers, the uplink, announcements, managed
/// devices), the ring becomes shared for good and every delivery takes its spin lock, as OVS's
/// dynamic transmit queues do. The owner's own changes of the ring (start, stop, pause, remap) take
/// the lock too, so a delivery from another worker never sees a ring half changed or in memory that
/// is about to be unmapped.
///
/// Switching to shared is an asymmetric Dekker handshake: the owner's fast path is a plain store and
/// load; the first other worker pays one process-wide barrier and waits out the owner's delivery in
/// progress, once per ring.
/// </summary>
public sealed class DeliveryGate
{
    private int _shared;
    private int _ownerInside;
    private int _lock;

    /// <summary>Whether a worker other than the owner has delivered into the ring (then every delivery locks).</summary>
    public bool Shared => Volatile.Read(ref _shared) != 0;

    /// <summary>
    /// Enters for one delivery. <paramref name="owner"/>: the caller is the worker that owns the ring.
    /// Returns whether the lock was taken; pass it to <see cref="Exit"/>.
    /// </summary>
    public bool Enter(bool owner)
    {
        if (owner)
        {
            Volatile.Write(ref _ownerInside, 1);
            // Ordered after the store above by the other side's process-wide barrier (MakeShared).
            if (Volatile.Read(ref _shared) == 0)
                return false;
            Volatile.Write(ref _ownerInside, 0);
        }
        else if (Volatile.Read(ref _shared) == 0)
        {
            MakeShared();
        }
        Lock();
        return true;
    }

    public void Exit(bool locked)
    {
        if (locked)
            Volatile.Write(ref _lock, 0);
        else
            Volatile.Write(ref _ownerInside, 0);
    }

    /// <summary>The owner changes the ring (start, stop, pause, remap): excludes every delivery from other workers.</summary>
    public Scope Exclusive()
    {
        Lock();
        return new Scope(this);
    }

    public readonly struct Scope(DeliveryGate gate) : IDisposable
    {
        public void Dispose() => Volatile.Write(ref gate._lock, 0);
    }

    private void MakeShared()
    {
        Interlocked.Exchange(ref _shared, 1);
        // Every other CPU is serialized here: an owner that had not yet made its store visible reads
        // _shared == 1 afterwards; one that did is waited for until its unlocked delivery ends.
        Interlocked.MemoryBarrierProcessWide();
        var spin = new SpinWait();
        while (Volatile.Read(ref _ownerInside) != 0)
            spin.SpinOnce(sleep1Threshold: -1);
    }

    private void Lock()
    {
        if (Interlocked.CompareExchange(ref _lock, 1, 0) == 0)
            return;
        var spin = new SpinWait();
        do
            spin.SpinOnce(sleep1Threshold: -1);
        while (Volatile.Read(ref _lock) != 0 || Interlocked.CompareExchange(ref _lock, 1, 0) != 0);
    }
}
