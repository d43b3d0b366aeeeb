using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Backend.Sessions;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend;

/// <summary>
/// The socket side of one served device: listens on a path (server mode) or connects to a path
/// where the front end listens, retrying (client mode). One front end at a time; after a disconnect
/// the device is reset and the endpoint accepts (or reconnects) again. All of it runs on the control
/// loop and nothing here waits for a peer: replies a front end does not read are queued and its
/// further requests wait until it does, failed accepts (descriptors exhausted) back off instead of
/// spinning, and whatever a peer can trigger repeatedly is logged through a rate limit. So a slow,
/// stalled or hostile front end only delays its own messages. A listening socket made by someone
/// else (libvirt's --fd) can be adopted instead; its path is then not ours to remove. For a back-end
/// handover the owner can make the endpoint take another path over (<see cref="TakeOver"/>) or give
/// its own up (<see cref="Release"/>); a path is removed only while it still names our socket.
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
    // The file our listener is bound to (null: a listener we did not bind, or none), so the path is
    // removed only while it is still ours: after a handover another process's socket sits there.
    private PathIdentity? _bound;
    private volatile string _socketPath;
    private readonly bool _ownsPath;
    private ulong _listenerToken;
    private bool _listenerArmed;
    // Accepting failed (e.g. EMFILE): the listener is out of epoll for this long, doubling up to the maximum.
    private TimeSpan _acceptDelay;
    private Connection? _connection;
    private Timer? _retryTimer;
    // A front end that arrived while another was connected, waiting for it to go (see OnAcceptReady).
    private UnixSocket? _waiting;
    private Timer? _waitTimer;

    /// <summary>How long a newcomer waits for the connected front end to go before it is refused.</summary>
    public static readonly TimeSpan HandOverGrace = TimeSpan.FromSeconds(2);
    /// <summary>First and longest pause in accepting after accept failed; reset by a successful accept.</summary>
    public static readonly TimeSpan AcceptBackOffMin = TimeSpan.FromMilliseconds(100), AcceptBackOffMax = TimeSpan.FromSeconds(2);
    private volatile bool _disposed;

    // One limit per kind: a peer that reconnects, refuses to read or corrupts its stream in a loop
    // cannot flood the log or keep the control loop busy formatting it.
    private readonly LogRateLimit _sessionLog = new();
    private readonly LogRateLimit _refusedLog = new();
    private readonly LogRateLimit _corruptLog = new();
    private readonly LogRateLimit _acceptLog = new(burst: 3);
    private static int _peerIoFallbackLogged;

    /// <param name="ownsPath">The adopted listener was bound at <paramref name="socketPath"/> for this endpoint: remove the file when done.</param>
    public VhostUserEndpoint(string socketPath, bool clientMode, VhostUserBackend backend, EventLoop control, ILogger logger,
        TimeSpan? retryInterval = null, UnixSocket? adoptedListener = null, bool ownsPath = false)
    {
        if (clientMode && adoptedListener != null)
            throw new ArgumentException("an adopted listening socket cannot be used in client mode", nameof(adoptedListener));
        _adopted = adoptedListener;
        _ownsPath = ownsPath;
        _socketPath = socketPath;
        _clientMode = clientMode;
        _backend = backend;
        _control = control;
        _logger = logger;
        _retryInterval = retryInterval ?? TimeSpan.FromSeconds(1);
    }

    /// <summary>
    /// Where this endpoint keeps its listener and session while the process lives, so a restarted
    /// process takes them back (<see cref="SessionKeeper"/>); null: the session ends with the process.
    /// Set before <see cref="Start"/>.
    /// </summary>
    public KeptEndpoint? Keeping
    {
        get => _keeping;
        init
        {
            _keeping = value;
            _backend.KeepsSessions = value != null;
        }
    }
    private readonly KeptEndpoint? _keeping;

    /// <summary>Group and mode the endpoint gives the socket files it binds (<see cref="UnixSocket.Listen"/>); null: the umask's.</summary>
    public SocketAccess? Access { get; init; }

    /// <summary>The socket path, or for an adopted listener a description such as "fd 3".</summary>
    public string SocketPath => _socketPath;
    /// <summary>Whether the endpoint listens (false once <see cref="Release"/>d, and in client mode).</summary>
    public bool Listening => Volatile.Read(ref _listener) != null;
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
        bool keptListener = false;
        _control.Invoke(() =>
        {
            var kept = Keeping?.TakeListener();
            keptListener = kept != null;
            _listener = _adopted ?? kept ?? UnixSocket.Listen(SocketPath, access: Access);
            if (_adopted == null || _ownsPath)
                _bound = UnixSocket.Identity(SocketPath);
            Keeping?.Listening(_listener);
            ArmListener();
            ResumeKeptSession();
        });
        _logger.LogInformation("{Device}: listening on {Path}{Kept}", _backend.Device.Name, SocketPath, keptListener ? " (the listener kept across the restart)" : "");
        if (EventFd.PeerFallbackReason is { } reason && Interlocked.Exchange(ref _peerIoFallbackLogged, 1) == 0)
            _logger.LogWarning("Front-end eventfds are read and written with poll-guarded calls ({Reason}): a front end " +
                "that clears O_NONBLOCK on its own copy could block a worker", reason);
    }

    private void ArmListener()
    {
        if (_listener == null || _listenerArmed)
            return;
        _listenerToken = _control.Register(_listener.Descriptor, EpollEvents.In, new ListenHandler(this));
        _listenerArmed = true;
    }

    private void DisarmListener()
    {
        if (_listener == null || !_listenerArmed)
            return;
        _control.Unregister(_listener.Descriptor, _listenerToken);
        _listenerArmed = false;
    }

    /// <summary>
    /// Takes <paramref name="path"/> over from whoever listens there (another back end handing the
    /// device over): binds a new listener and renames it over the path (<see cref="UnixSocket.ListenReplacing"/>),
    /// so a front end reconnecting to the path reaches this endpoint, with no moment the path refuses.
    /// The previous listener, if any, is closed and its path removed if still ours. Safe from any
    /// thread; the path is taken when this returns, the switch of listeners follows on the control loop.
    /// Throws ArgumentException (bad path) or NativeException (bind, rename).
    /// </summary>
    public void TakeOver(string path)
    {
        if (_clientMode)
            throw new InvalidOperationException("a client-mode endpoint has no socket to take over");
        var listener = UnixSocket.ListenReplacing(path, access: Access);
        var identity = UnixSocket.Identity(path);
        try
        {
            _control.Post(() =>
            {
                if (_disposed)
                {
                    listener.Dispose();
                    return;
                }
                CloseListener();
                _listener = listener;
                _bound = identity;
                _socketPath = path;
                Keeping?.Listening(listener);
                ArmListener();
                _logger.LogInformation("{Device}: took over {Path}; front ends connecting there now reach this back end", _backend.Device.Name, path);
            });
        }
        catch (ObjectDisposedException)
        {
            listener.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Gives the device's socket up (the other half of a handover): the connected front end is
    /// disconnected, the listener closed and its path removed only if it still names our socket (the
    /// back end taking over has put its own there). Until a <see cref="TakeOver"/> nobody can connect.
    /// Safe from any thread; done on the control loop. A client-mode endpoint has nothing to give up
    /// (it would only connect again): InvalidOperationException.
    /// </summary>
    public void Release(string why)
    {
        if (_clientMode)
            throw new InvalidOperationException("a client-mode endpoint connects to its front end; it has no socket to release");
        _control.Post(() => ReleaseNow(why));
    }

    private void ReleaseNow(string why)
    {
        if (_disposed)
            return;
        CloseConnection(why);
        CloseListener();
        _logger.LogInformation("{Device}: released {Path} ({Why})", _backend.Device.Name, SocketPath, why);
    }

    private void CloseListener()
    {
        if (_listener == null)
            return;
        DisarmListener();
        _listener.Dispose();
        _listener = null;
        Keeping?.NotListening();
        if (_bound is { } bound)
            UnixSocket.UnlinkIfSame(SocketPath, bound);
        _bound = null;
    }

    /// <summary>Closes the current connection as if the front end had gone (e.g. the device is being removed); <paramref name="why"/> is logged.</summary>
    public void Disconnect(string why = "disconnected by the back end") => _control.Invoke(() => CloseConnection(why));

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
        while (_listener != null)
        {
            UnixSocket? socket;
            try
            {
                socket = _listener.Accept();
            }
            catch (NativeException e)
            {
                BackOffAccepting(e);
                return;
            }
            if (socket == null)
                return;
            _acceptDelay = TimeSpan.Zero;
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

    /// <summary>
    /// Accept failed: out of descriptors (EMFILE, ENFILE), memory (ENOBUFS, ENOMEM) or the like. The
    /// pending connection stays queued and the listener readable, so retrying at once would spin the
    /// control loop; instead the listener leaves epoll for a while, and a descriptor freed meanwhile
    /// (a front end leaving) lets the next try succeed.
    /// </summary>
    private void BackOffAccepting(NativeException e)
    {
        _acceptDelay = _acceptDelay == TimeSpan.Zero ? AcceptBackOffMin
            : TimeSpan.FromTicks(Math.Min(_acceptDelay.Ticks * 2, AcceptBackOffMax.Ticks));
        _logger.LogLimited(_acceptLog, LogLevel.Warning, "{Device}: accepting a front end on {Path} failed: {Error}; next try in {Delay} ms",
            _backend.Device.Name, SocketPath, e.Message, (long)_acceptDelay.TotalMilliseconds);
        DisarmListener();
        // On the loop, not a Timer: short of descriptors, the runtime cannot start a thread-pool thread.
        _control.RunAfter(_acceptDelay, () =>
        {
            if (!_disposed)
                ArmListener();
        });
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
        _logger.LogLimited(_refusedLog, LogLevel.Warning, "{Device}: refused a second front end on {Path}; {Why}", _backend.Device.Name, SocketPath, why);
        socket.Dispose();
    }

    private void Adopt(UnixSocket socket, bool resumed = false)
    {
        ConnectionCount++;
        _connection = new Connection(this, socket);
        _connection.Token = _control.Register(socket.Descriptor, ConnectionEvents, _connection);
        Keeping?.Connected(socket, resumed);
        if (!resumed)
            _logger.LogLimited(_sessionLog, LogLevel.Information, "{Device}: front end connected on {Path}", _backend.Device.Name, SocketPath);
    }

    /// <summary>
    /// Takes back the connection the previous process of this daemon kept and rebuilds its session,
    /// so the front end carries on as if nothing happened. Deferred until every endpoint is up and
    /// the device group has wired its members (<see cref="SessionKeeper.StartRestoredRings"/>), in
    /// three passes over all endpoints: sessions rebuilt, then the rings the devices only fill, then
    /// the rest, so no port forwards what piled up to one not back yet. Nothing the front end sent
    /// meanwhile is read before its session is back. A session that cannot be rebuilt is closed:
    /// the front end sees a disconnect and starts over, as without a keeper.
    /// </summary>
    private void ResumeKeptSession()
    {
        if (Keeping?.TakeSession() is not { } kept)
            return;
        Connection? connection = null;
        Keeping.Restored(pass => _control.Invoke(() =>
        {
            if (_disposed)
            {
                if (connection == null)
                    kept.Connection.Dispose();
                return;
            }
            if (pass == RestorePass.Session)
            {
                Adopt(kept.Connection, resumed: true);
                connection = _connection;
                if ((kept.Problem ?? _backend.RestoreSession(kept.State!)) is { } problem)
                    NotResumed(problem);
                return;
            }
            if (_connection != connection || connection == null)
                return;
            if (_backend.StartRestoredRings(kept.State!, pass == RestorePass.FillOnlyRings) is { } failed)
            {
                NotResumed(failed);
                return;
            }
            if (pass == RestorePass.FillOnlyRings)
                return;
            Keeping.Changed(_backend.CaptureSession());
            _logger.LogInformation("{Device}: front end's session on {Path} resumed after the restart", _backend.Device.Name, SocketPath);
        }));
    }

    private void NotResumed(string problem)
    {
        _logger.LogWarning("{Device}: the front end's session on {Path} could not be resumed ({Problem}); disconnecting it so it starts over",
            _backend.Device.Name, SocketPath, problem);
        CloseConnection("session not resumable");
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
        Keeping?.Disconnected();
        _logger.LogLimited(_sessionLog, LogLevel.Information, "{Device}: front end disconnected ({Reason}); device reset", _backend.Device.Name, reason);
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

    private void OnConnectionReady(Connection c, EpollEvents events)
    {
        // Replies first: while the front end leaves some unread, its further requests wait in its
        // socket (it stalls only itself), and we wait for room with EPOLLOUT, not on this thread.
        if (c.AwaitingRoom)
        {
            try
            {
                if (!c.Replies.Flush())
                    return;
            }
            catch (NativeException e)
            {
                CloseConnection($"sending a reply failed: {e.Message}");
                return;
            }
            c.AwaitingRoom = false;
            _control.Modify(c.Socket.Descriptor, c.Token, ConnectionEvents);
        }
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
                    _logger.LogLimited(_corruptLog, LogLevel.Warning, "{Device}: corrupt message stream: {Error}", _backend.Device.Name, error);
                    CloseConnection("corrupt message stream");
                    return;
            }
            var request = message!.Request;
            var result = _backend.Handle(message);
            // Recorded before the reply goes out: what the front end was told happened survives a restart.
            Keeping?.Changed(_backend.CaptureSession());
            if (result.Reply != null)
            {
                try
                {
                    if (!c.Replies.Enqueue(request, result.Reply, result.ReplyFd))
                    {
                        CloseConnection($"it leaves more than {ReplyQueue.DefaultCapacity} bytes of replies unread");
                        return;
                    }
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
            if (!c.Replies.IsEmpty)
            {
                c.AwaitingRoom = true;
                _control.Modify(c.Socket.Descriptor, c.Token, EpollEvents.Out);
                return;
            }
        }
    }

    /// <summary>What a connection waits for while it is read (while replies wait for room: only Out).</summary>
    private const EpollEvents ConnectionEvents = EpollEvents.In | EpollEvents.ReadHangUp;

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
                CloseListener();
                Keeping?.Closed();
            });
        }
        catch (ObjectDisposedException)
        {
            _listener?.Dispose();
            if (_bound is { } bound)
                UnixSocket.UnlinkIfSame(SocketPath, bound);
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
        public ReplyQueue Replies { get; } = new(socket);
        public ulong Token { get; set; }
        /// <summary>Replies are queued: the socket is watched for room only, and requests are not read.</summary>
        public bool AwaitingRoom { get; set; }

        public void OnReady(EpollEvents events) => owner.OnConnectionReady(this, events);

        public void Dispose()
        {
            Reader.Dispose();
            Replies.Dispose();
            Socket.Dispose();
        }
    }
}
