namespace VhostUserVirtio.Devices.Switch;

/// <summary>Something plugged into the <see cref="L2Switch"/>: a virtio-net device or the TAP uplink.</summary>
public interface ISwitchPort
{
    string Name { get; }
    PortCounters Counters { get; }

    /// <summary>
    /// Takes a frame addressed to this port, on any of the group's data-path workers (several may
    /// deliver at once). Returns false with the reason when it cannot. Notifications may be deferred
    /// until the same worker calls <see cref="FlushNotifications"/>.
    /// </summary>
    bool Deliver(in Frame frame, Mac destination, out DropReason reason);

    /// <summary>Sends the notifications the calling worker's <see cref="Deliver"/> calls deferred (one per burst, not per frame).</summary>
    void FlushNotifications();

    /// <summary>
    /// Stopped by its owner (VIRTIO 1.4 DEV_MODE_SET): frames for it are discarded without being
    /// offered or counted on the port, since a stopped device's state changes only through its
    /// driver; the switch counts them (<see cref="L2Switch.DroppedWhileStopped"/>).
    /// </summary>
    bool Stopped => false;

    /// <summary>
    /// MACs this port may have learned at once when it is not the switch's per-port limit
    /// (<see cref="L2Switch.MaxMacsPerPort"/>); null for that limit. The host's uplink has its own:
    /// a whole network may live behind it.
    /// </summary>
    int? MaxLearnedMacs => null;
}
