namespace VhostUserVirtio.Backend;

/// <summary>
/// A transport through which the group owner drives a member device instead of the member's own
/// vhost-user front end (today: the legacy interface admin commands). The member's front end then
/// only supplies the device's DMA space (its memory table), its interrupts (call descriptors) and its
/// doorbells (kick descriptors). Called on the worker that owns the device's rings.
/// </summary>
public interface IOwnerTransport
{
    /// <summary>A queue has used buffers the driver wants to hear about: raise the transport's interrupt.</summary>
    void Raise(DeviceQueue queue);

    /// <summary>
    /// The member's front end reset the device or went away: the transport stops the rings it started
    /// and forgets its state; the back end then releases the device from the owner.
    /// </summary>
    void FrontEndReset();

    /// <summary>
    /// The transport places the rings in a memory of its own (a managed device's window into its
    /// owner's memory), not in the device's front-end memory: that memory's changes leave them alone.
    /// </summary>
    bool OwnsMemory => false;
}
