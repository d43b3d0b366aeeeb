using System.IO.Pipelines;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Daemon.Control;

/// <summary>
/// The operator's control socket (<c>vhost-virtio.ctl</c> beside the vhost-user sockets): a Unix
/// stream socket taking newline-delimited JSON requests (<see cref="ControlCommands"/>). It runs on
/// the thread pool, apart from the control loop and the workers: commands that need the data path ask
/// its loop (<see cref="Group.DeviceGroup.Status"/>), so a client can slow only its own replies. At
/// most <see cref="ControlLimits.MaxClients"/> clients are served at once.
/// </summary>
internal sealed class ControlServer : IDisposable
{
    public const string FileName = "vhost-virtio.ctl";

    private static readonly SocketAccess OwnerOnly = new(null, 0x180); // 0600

    private readonly Socket _listener;
    private readonly PathIdentity? _bound;
    private readonly ControlCommands _commands;
    private readonly ControlLimits _limits;
    private readonly ILogger _log;
    private readonly LogRateLimit _logLimit = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accepting;
    private readonly HashSet<Task> _clients = [];
    private readonly Lock _gate = new();

    private ControlServer(string path, Socket listener, ControlCommands commands, ControlLimits limits, ILogger log)
    {
        Path = path;
        _listener = listener;
        _bound = UnixSocket.Identity(path);
        _commands = commands;
        _limits = limits;
        _log = log;
        _accepting = Task.Run(AcceptLoop);
    }

    public string Path { get; }

    /// <summary>
    /// Listens on <paramref name="path"/>: a stale socket file left by a daemon that died is replaced;
    /// one another daemon still answers on is not, nor a file that is not a socket (IOException).
    /// </summary>
    public static ControlServer Listen(string path, ControlCommands commands, ControlLimits limits, ILogger log)
    {
        if (UnixSocket.Identity(path) is { IsSocket: false })
            throw new IOException($"{path} exists and is not a socket");
        if (System.IO.Path.GetDirectoryName(path) is { Length: > 0 } dir)
            Directory.CreateDirectory(dir);
        Socket listener;
        try
        {
            // Owner only, set before anyone can connect: the control socket steers the daemon (log
            // level), so --socket-group, which opens the vhost-user sockets to the VMM's user, does not apply.
            using var bound = UnixSocket.Listen(path, limits.MaxClients, OwnerOnly);
            listener = new Socket(new SafeSocketHandle(bound.Descriptor.Release(), ownsHandle: true));
        }
        catch (NativeException e)
        {
            throw new IOException($"cannot listen on {path}: {e.Message}", e);
        }
        return new ControlServer(path, listener, commands, limits, log);
    }

    private async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TooManyOpenSockets or SocketError.NoBufferSpaceAvailable)
            {
                // Out of descriptors: wait instead of spinning on a listener that stays readable.
                _log.LogLimited(_logLimit, LogLevel.Warning, "control socket: accept failed: {Error}", e.Message);
                try { await Task.Delay(500, _stop.Token).ConfigureAwait(false); } catch (OperationCanceledException) { return; }
                continue;
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                if (!_stop.IsCancellationRequested)
                    _log.LogLimited(_logLimit, LogLevel.Warning, "control socket: accept failed: {Error}", e.Message);
                continue;
            }
            Admit(client);
        }
    }

    private void Admit(Socket client)
    {
        var stream = new NetworkStream(client, ownsSocket: true);
        lock (_gate)
        {
            if (_clients.Count >= _limits.MaxClients)
            {
                _ = Refuse(stream);
                return;
            }
            var task = Task.Run(() => ControlConnection.ServeAsync(stream, _commands, _limits, _log, _logLimit, _stop.Token));
            _clients.Add(task);
            task.ContinueWith(t => { lock (_gate) _clients.Remove(t); }, TaskScheduler.Default);
        }
    }

    /// <summary>Tells a client over the limit why it is closed, without waiting on it for long.</summary>
    private async Task Refuse(NetworkStream stream)
    {
        _log.LogLimited(_logLimit, LogLevel.Warning, "control socket: client refused: {Max} clients are connected", _limits.MaxClients);
        var writer = PipeWriter.Create(stream, new StreamPipeWriterOptions(leaveOpen: true));
        try
        {
            ControlCommands.WriteError(writer, $"too many control clients ({_limits.MaxClients}); try again later");
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            await writer.FlushAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException)
        {
        }
        finally
        {
            // Closed first, so completing the writer cannot wait on a client that does not read.
            await stream.DisposeAsync().ConfigureAwait(false);
            await ControlConnection.Complete(null, writer).ConfigureAwait(false);
        }
    }

    /// <summary>Stops accepting, closes every client and removes the socket file if it is still the one bound here.</summary>
    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        Task[] clients;
        lock (_gate)
            clients = [.. _clients, _accepting];
        // Clients finish at their next read or flush; one stuck in a data-path command ends with its deadline.
        Task.WaitAll(clients.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default)).ToArray(), TimeSpan.FromSeconds(15));
        if (_bound is { } bound)
            UnixSocket.UnlinkIfSame(Path, bound);
        _stop.Dispose();
    }
}
