using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend;

/// <summary>
/// A virtio device model served over vhost-user. The back end calls the control methods on the
/// control loop and <see cref="ProcessQueue"/> on the worker that owns the queue; a device never sees
/// sockets or messages.
/// </summary>
public interface IVirtioDevice
{
    /// <summary>Name for logs (e.g. "echo0", "vf1").</summary>
    string Name { get; }

    /// <summary>Virtio feature bits the device offers (VERSION_1, ring features, device bits).</summary>
    ulong Features { get; }

    /// <summary>Device-specific protocol features on top of what the back end implements itself (e.g. NET_MTU, RARP).</summary>
    ProtocolFeatures ExtraProtocolFeatures { get; }

    /// <summary>Number of virtqueues the device has (GET_QUEUE_NUM).</summary>
    int QueueCount { get; }

    /// <summary>Largest ring size accepted by SET_VRING_NUM (a power of two).</summary>
    int MaxQueueSize { get; }

    /// <summary>Size of the device configuration space in bytes (0 = none; then CONFIG is not offered).</summary>
    int ConfigSize { get; }

    /// <summary>Reads config bytes; the range was already checked against <see cref="ConfigSize"/>.</summary>
    void ReadConfig(int offset, Span<byte> data);

    /// <summary>Writes config bytes (range checked); returns false when the fields written are read-only.</summary>
    bool WriteConfig(int offset, ReadOnlySpan<byte> data);

    /// <summary>The driver's accepted features (SET_FEATURES).</summary>
    void SetDriverFeatures(ulong features);

    /// <summary>A ring started (it now belongs to a worker).</summary>
    void QueueStarted(DeviceQueue queue);

    /// <summary>A ring stopped (GET_VRING_BASE, reset or disconnect).</summary>
    void QueueStopped(DeviceQueue queue);

    /// <summary>
    /// The driver kicked, or the queue started or was enabled. Runs on the owning worker: pop chains,
    /// handle them, push used elements, notify. Must not block and should not allocate.
    /// </summary>
    void ProcessQueue(DeviceQueue queue);

    /// <summary>
    /// Whether a driver notification on this queue means work for the device. A queue the device only
    /// fills when it has something (a net receive queue) answers false: its kicks are suppressed and
    /// it is never polled.
    /// </summary>
    bool WantsKicks(int queueIndex) => true;

    /// <summary>Device reset (RESET_DEVICE, RESET_OWNER, disconnect): back to the initial state.</summary>
    void Reset();
}
