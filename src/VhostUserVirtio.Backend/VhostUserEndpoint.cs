using Microsoft.Extensions.Logging;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend;

/// <summary>
/// The socket side of one served device: listens on a path (server mode) or connects to a path
/// where the front end listens, retrying (client mode). One front end at a time; after a disconnect
/// the device is reset and the endpoint accepts (or reconnects) again. All of it runs on the control
/// loop, so a slow or stalled front end only delays its own messages. A listening socket made by
/// someone else (libvirt's --fd) can be adopted instead; its path is then not ours to remove.
/// </summary>
public sealed class VhostUserEndpoint : IDisposable
{
    private readonly VhostUserBackend _backend;
    private readonly EventLoop _control;
    private readonly ILogger _logger;
    private readonly bool _clientMode;
    private readonly TimeSpan _retryInterval;
    private readonly UnixSocket? _adopted;
    private UnixSocket? _listener;
    private ulong _listenerToken;
    private Connection? _connection;
    private Timer? _retryTimer;
    // A front end that arrived while another was connected, waiting for it to go (see OnAcceptReady).
    private UnixSocket? _waiting;
    private Timer? _waitTimer;

    /// <summary>How long a newcomer waits for the connected front end to go before it is refused.</summary>
    public static readonly TimeSpan HandOverGrace = TimeSpan.FromSeconds(2);
    private volatile bool _disposed;

    public VhostUserEndpoint(string socketPath, bool clientMode, VhostUserBackend backend, EventLoop control, ILogger logger,
        TimeSpan? retryInterval = null, UnixSocket? adoptedListener = null)
    {
        if (clientMode && adoptedListener != null)
            throw new ArgumentException("an adopted listening socket cannot be used in client mode", nameof(adoptedListener));
        _adopted = adoptedListener;
        SocketPath = socketPath;
        _clientMode = clientMode;
        _backend = backend;
        _control = control;
        _logger = logger;
        _retryInterval = retryInterval ?? TimeSpan.FromSeconds(1);
    }

    /// <summary>The socket path, or for an adopted listener a description such as "fd 3".</summary>
    public string SocketPath { get; }
    public VhostUserBackend Backend => _backend;
    public bool IsConnected => _connection != null;
    /// <summary>Front ends that have connected over this endpoint's life.</summary>
    public int ConnectionCount { get; private set; }

    /// <summary>Starts listening (server mode) or connecting (client mode). Throws if the socket cannot be created.</summary>
    public void Start()
    {
        if (_clientMode)
        {
            _retryTimer = new Timer(_ => TryConnect(), null, TimeSpan.Zero, Timeout.InfiniteTimeSpan);
            _logger.LogInformation("{Device}: connecting to {Path} (client mode)", _backend.Device.Name, SocketPath);
            return;
        }
        _control.Invoke(() =>
        {
            _listener = _adopted ?? UnixSocket.Listen(SocketPath);
            _listenerToken = _control.Register(_listener.Descriptor, EpollEvents.In, new ListenHandler(this));
        });
        _logger.LogInformation("{Device}: listening on {Path}", _backend.Device.Name, SocketPath);
    }

    /// <summary>Closes the current connection as if the front end had gone (e.g. the device is being removed).</summary>
    public void Disconnect() => _control.Invoke(() => CloseConnection("disconnected by the back end"));

    private void TryConnect()
    {
        if (_disposed)
            return;
        try
        {
            var socket = UnixSocket.Connect(SocketPath, nonBlocking: true);
            _control.Post(() =>
            {
                if (_disposed) { socket.Dispose(); return; }
                Adopt(socket);
            });
        }
        catch (Exception e) when (e is NativeException or ArgumentException)
        {
            _logger.LogDebug("{Device}: connect to {Path} failed ({Error}); retrying", _backend.Device.Name, SocketPath, e.Message);
            _retryTimer?.Change(_retryInterval, Timeout.InfiniteTimeSpan);
        }
    }

    private void OnAcceptReady()
    {
        while (_listener?.Accept() is { } socket)
        {
            // The previous front end may have closed just before this one connected, with its end
            // of stream still unread: read it now so a quick reconnect is not refused.
            if (_connection != null)
                OnConnectionReady(_connection, EpollEvents.In);
            if (_connection == null)
            {
                Adopt(socket);
                continue;
            }
            // Its end of stream may also be late: a child process forked at the moment the front end
            // closed holds the socket open until it execs. So one newcomer waits a moment for the
            // connected front end to go, and only then is refused; what it sends meanwhile waits in
            // its socket.
            if (_waiting != null)
            {
                Refuse(socket, "one is already connected and another is waiting");
                continue;
            }
            _waiting = socket;
            _waitTimer ??= new Timer(_ =>
            {
                if (_disposed)
                    return;
                try { _control.Post(RefuseWaiting); }
                catch (ObjectDisposedException) { } // shutting down: Dispose closes it
            });
            _waitTimer.Change(HandOverGrace, Timeout.InfiniteTimeSpan);
        }
    }

    private void RefuseWaiting()
    {
        var socket = _waiting;
        if (socket == null)
            return;
        _waiting = null;
        Refuse(socket, $"one is already connected (waited {HandOverGrace.TotalSeconds:0} s for it to go)");
    }

    private void Refuse(UnixSocket socket, string why)
    {
        _logger.LogWarning("{Device}: refused a second front end on {Path}; {Why}", _backend.Device.Name, SocketPath, why);
        socket.Dispose();
    }

    private void Adopt(UnixSocket socket)
    {
        ConnectionCount++;
        _connection = new Connection(this, socket);
        _connection.Token = _control.Register(socket.Descriptor, EpollEvents.In | EpollEvents.ReadHangUp, _connection);
        _logger.LogInformation("{Device}: front end connected on {Path}", _backend.Device.Name, SocketPath);
    }

    private void CloseConnection(string reason)
    {
        var c = _connection;
        if (c == null)
            return;
        _connection = null;
        _control.Unregister(c.Socket.Descriptor, c.Token);
        c.Dispose();
        _backend.Disconnected();
        _logger.LogInformation("{Device}: front end disconnected ({Reason}); device reset", _backend.Device.Name, reason);
        if (_clientMode && !_disposed)
            _retryTimer?.Change(_retryInterval, Timeout.InfiniteTimeSpan);
        if (_waiting is { } next)
        {
            _waiting = null;
            _waitTimer?.Change(Timeout.Infinite, Timeout.Infinite);
            if (_disposed)
                next.Dispose();
            else
                Adopt(next);
        }
    }

    /// <summary>Messages handled per wake-up before other sockets get their turn (epoll is level-triggered).</summary>
    private const int MessagesPerWakeup = 64;

    /// <summary>How long a reply may wait for room in the socket before the front end is deemed stuck.</summary>
    private const int ReplyTimeoutMs = 2000;

    private void OnConnectionReady(Connection c, EpollEvents events)
    {
        for (int handled = 0; _connection == c && handled < MessagesPerWakeup; handled++)
        {
            MessageReader.Status status;
            Message? message;
            string? error;
            try
            {
                status = c.Reader.TryRead(out message, out error);
            }
            catch (NativeException e)
            {
                CloseConnection($"receive failed: {e.Message}");
                return;
            }
            switch (status)
            {
                case MessageReader.Status.WouldBlock:
                    return;
                case MessageReader.Status.Closed:
                    CloseConnection("end of stream");
                    return;
                case MessageReader.Status.Corrupt:
                    _logger.LogWarning("{Device}: corrupt message stream: {Error}", _backend.Device.Name, error);
                    CloseConnection("corrupt message stream");
                    return;
            }
            var request = message!.Request;
            var result = _backend.Handle(message);
            if (result.Reply != null)
            {
                try
                {
                    MessageWriter.Reply(c.Socket, request, result.Reply, ReplyTimeoutMs);
                }
                catch (NativeException e)
                {
                    CloseConnection($"reply to {request} failed: {e.Message}");
                    return;
                }
            }
            if (result.CloseConnection)
            {
                CloseConnection($"after refusing {request}");
                return;
            }
        }
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _retryTimer?.Dispose();
        _waitTimer?.Dispose();
        try
        {
            _control.Invoke(() =>
            {
                CloseConnection("back end shutting down");
                if (_listener != null)
                {
                    _control.Unregister(_listener.Descriptor, _listenerToken);
                    _listener.Dispose();
                    _listener = null;
                }
            });
        }
        catch (ObjectDisposedException)
        {
            _listener?.Dispose();
        }
        if (!_clientMode && _adopted == null)
        {
            try { File.Delete(SocketPath); } catch (IOException) { }
        }
    }

    private sealed class ListenHandler(VhostUserEndpoint owner) : IReadyHandler
    {
        public void OnReady(EpollEvents events) => owner.OnAcceptReady();
    }

    private sealed class Connection(VhostUserEndpoint owner, UnixSocket socket) : IReadyHandler, IDisposable
    {
        public UnixSocket Socket { get; } = socket;
        public MessageReader Reader { get; } = new(socket);
        public ulong Token { get; set; }

        public void OnReady(EpollEvents events) => owner.OnConnectionReady(this, events);

        public void Dispose()
        {
            Reader.Dispose();
            Socket.Dispose();
        }
    }
}
