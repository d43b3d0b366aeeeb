using Microsoft.Extensions.Logging;
using VhostUserVirtio.Memory;

namespace VhostUserVirtio.Backend;

/// <summary>
/// The running back end of one process: the control loop, the data-path workers and one endpoint
/// per served device. The daemon and the tests compose devices through this.
/// </summary>
public sealed class VhostUserServer : IDisposable
{
    private readonly ILoggerFactory _loggers;
    private readonly List<VhostUserEndpoint> _endpoints = new();
    private readonly object _gate = new();

    /// <param name="pollWindow">How long workers keep busy-polling after the last work (adaptive polling); zero: never poll.</param>
    /// <param name="memoryPolicy">What guest memory each connection may hand over; <see cref="MemoryPolicy.Default"/> when null.</param>
    public VhostUserServer(ILoggerFactory loggers, int workerCount = 1, TimeSpan pollWindow = default, MemoryPolicy? memoryPolicy = null)
    {
        _loggers = loggers;
        MemoryPolicy = memoryPolicy ?? MemoryPolicy.Default;
        Control = new EventLoop("control", loggers.CreateLogger<EventLoop>());
        Workers = new WorkerPool(workerCount, loggers, pollWindow);
    }

    public EventLoop Control { get; }

    /// <summary>
    /// The session keeper this process runs under, if any: endpoints serving a path of their own keep
    /// their listener and session there. Set before serving.
    /// </summary>
    public Sessions.SessionKeeper? Sessions { get; set; }

    /// <summary>
    /// Group and mode for every socket file this process listens on (--socket-group, --socket-mode),
    /// or null for the umask's default. Set before serving; whoever binds another socket for this
    /// process (a managed device, a control socket) passes it to <see cref="Interop.UnixSocket.Listen"/>.
    /// </summary>
    public Interop.SocketAccess? SocketAccess { get; set; }
    public WorkerPool Workers { get; }
    public MemoryPolicy MemoryPolicy { get; }

    public IReadOnlyList<VhostUserEndpoint> Endpoints
    {
        get { lock (_gate) return _endpoints.ToArray(); }
    }

    /// <summary>Serves <paramref name="device"/> on <paramref name="socketPath"/> (listening, or connecting in client mode).</summary>
    /// <param name="pinnedWorker">Run every ring of the device on this worker (devices sharing a switch); null spreads them.</param>
    /// <param name="placement">Where each front-end ring runs instead (<see cref="VhostUserBackend.Placement"/>); the pinned worker stays the device's home.</param>
    public VhostUserEndpoint Serve(IVirtioDevice device, string socketPath, bool clientMode = false, Worker? pinnedWorker = null, Func<int, Worker>? placement = null) =>
        ServeCore(device, socketPath, clientMode, null, pinnedWorker, placement);

    /// <summary>
    /// Serves <paramref name="device"/> on a listening socket someone else created (libvirt's --fd);
    /// the endpoint owns it from now on. <paramref name="description"/> names it in logs.
    /// </summary>
    public VhostUserEndpoint Serve(IVirtioDevice device, Interop.UnixSocket listener, string description, Worker? pinnedWorker = null, Func<int, Worker>? placement = null) =>
        ServeCore(device, description, false, listener, pinnedWorker, placement);

    /// <summary>
    /// A back end for <paramref name="device"/> that no socket serves yet (callable on any thread): a
    /// device created from a data-path worker is usable there at once, and its socket is served
    /// later on the control loop (<see cref="Serve(VhostUserBackend, Interop.UnixSocket, string)"/>).
    /// </summary>
    /// <param name="logger">The device's logger; by default one named after it (loggers live as long as the factory: pass a shared one for devices made by the thousand).</param>
    public VhostUserBackend CreateBackend(IVirtioDevice device, Worker? pinnedWorker = null, ILogger? logger = null, Func<int, Worker>? placement = null) =>
        new(device, Workers, logger ?? _loggers.CreateLogger("VhostUserVirtio.Device." + device.Name), pinnedWorker, MemoryPolicy) { ControlLoop = Control, Placement = placement };

    /// <summary>
    /// Serves <paramref name="backend"/> on <paramref name="listener"/>, a socket its caller bound at
    /// <paramref name="socketPath"/>; the endpoint removes that file when it stops, if it still names
    /// the socket. Call on the control loop (or let it block on it).
    /// </summary>
    public VhostUserEndpoint Serve(VhostUserBackend backend, Interop.UnixSocket listener, string socketPath, ILogger? logger = null)
    {
        logger ??= _loggers.CreateLogger("VhostUserVirtio.Device." + backend.Device.Name);
        var endpoint = new VhostUserEndpoint(socketPath, false, backend, Control, logger, adoptedListener: listener, ownsPath: true);
        endpoint.Start();
        lock (_gate)
            _endpoints.Add(endpoint);
        return endpoint;
    }

    private VhostUserEndpoint ServeCore(IVirtioDevice device, string socketPath, bool clientMode, Interop.UnixSocket? listener, Worker? pinnedWorker,
        Func<int, Worker>? placement)
    {
        var backend = CreateBackend(device, pinnedWorker, placement: placement);
        var logger = _loggers.CreateLogger("VhostUserVirtio.Device." + device.Name);
        var endpoint = new VhostUserEndpoint(socketPath, clientMode, backend, Control, logger, adoptedListener: listener)
        {
            Access = SocketAccess,
            Keeping = clientMode || listener != null ? null : Sessions?.ForEndpoint(socketPath),
        };
        endpoint.Start();
        lock (_gate)
            _endpoints.Add(endpoint);
        return endpoint;
    }

    /// <summary>Stops serving one device: its front end is disconnected and its socket removed.</summary>
    public void Remove(VhostUserEndpoint endpoint)
    {
        lock (_gate)
            _endpoints.Remove(endpoint);
        endpoint.Dispose();
    }

    public void Dispose()
    {
        foreach (var e in Endpoints)
            Remove(e);
        Control.Dispose();
        Workers.Dispose();
    }
}
