using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Net;

namespace VhostUserVirtio.Group.Transport;

/// <summary>
/// A managed (SIOV-style) device the owner created through its transport queue: a virtio-net device
/// on the group's switch, reachable two ways that share the one device model — driven through the
/// transport queue with its rings in its DMA window of the owner's memory (<see cref="Transport"/>),
/// or attached by a VMM on its own socket <c>vdev&lt;ID&gt;.sock</c> as an ordinary vhost-user-net
/// device (<see cref="Endpoint"/>). Whichever drives it first has it until it resets.
/// </summary>
public sealed class ManagedDevice
{
    private volatile VhostUserEndpoint? _endpoint;

    internal ManagedDevice(ulong id, NetDevice device, VhostUserBackend backend, string socketPath)
    {
        Id = id;
        Device = device;
        Backend = backend;
        SocketPath = socketPath;
    }

    public ulong Id { get; }
    public string Name => Device.Name;
    public NetDevice Device { get; }
    public VhostUserBackend Backend { get; }
    public string SocketPath { get; }

    /// <summary>The socket's endpoint, once the control loop serves it (null for a moment after DEV_CREATE).</summary>
    public VhostUserEndpoint? Endpoint { get => _endpoint; internal set => _endpoint = value; }

    /// <summary>Set when DEV_DESTROY removed it (or the group stops): a socket still being served is closed at once.</summary>
    internal volatile bool Destroyed;

    /// <summary>Whether a VMM is connected on the device's socket.</summary>
    public bool VmmAttached => _endpoint?.IsConnected == true;

    internal ManagedTransport Transport { get; private set; } = null!;

    internal void Attach(IManagedDeviceHost host, ILogger logger) => Transport = new ManagedTransport(this, host, logger);

    public static string DeviceName(ulong id) => $"vdev{id}";
    public static string SocketFileName(ulong id) => $"vdev{id}.sock";
}
