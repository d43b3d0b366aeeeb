using Microsoft.Extensions.Logging;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Backend.Sessions;

/// <summary>
/// The keeper's side of <see cref="KeeperProtocol"/>: holds descriptors by name for one daemon
/// process at a time, in a socket inside a folder only this user can enter. Only the process
/// <see cref="Authorized"/> names may connect (SO_PEERCRED), so no other process on the machine can
/// fetch guest memory or connections from it. Runs on its own thread until disposed.
/// </summary>
public sealed class DescriptorStore : IDisposable
{
    private readonly Dictionary<string, FileDescriptor> _kept = new();
    private readonly object _gate = new();
    private readonly UnixSocket _listener;
    private readonly string _folder;
    private readonly ILogger _logger;
    private readonly Thread _thread;
    private volatile bool _disposed;
    private volatile int _authorized = -1;

    public DescriptorStore(ILogger logger)
    {
        _logger = logger;
        _folder = Directory.CreateTempSubdirectory("vhost-virtio-keeper.").FullName; // mode 0700
        Path = System.IO.Path.Combine(_folder, "keeper.sock");
        _listener = UnixSocket.ListenRecords(Path);
        _thread = new Thread(Serve) { IsBackground = true, Name = "keeper" };
        _thread.Start();
    }

    /// <summary>The socket daemons reach the store at.</summary>
    public string Path { get; }

    /// <summary>Value of <see cref="Authorized"/> while the daemon is being started: its connection waits until its pid is known.</summary>
    public const int Pending = -2;

    /// <summary>The process allowed to use the store (the daemon the keeper runs now); -1: any process of this user.</summary>
    public int Authorized
    {
        get => _authorized;
        set => _authorized = value;
    }

    /// <summary>Names kept now.</summary>
    public int Count
    {
        get { lock (_gate) return _kept.Count; }
    }

    /// <summary>Closes everything kept (the daemon stopped for good: its front ends see their connections close).</summary>
    public void Clear()
    {
        lock (_gate)
        {
            foreach (var fd in _kept.Values)
                fd.Dispose();
            _kept.Clear();
        }
    }

    private void Serve()
    {
        while (!_disposed)
        {
            UnixSocket? client;
            try
            {
                if (!_listener.Descriptor.WaitReadable(500))
                    continue;
                client = _listener.Accept();
            }
            catch (Exception e) when (e is NativeException or ObjectDisposedException)
            {
                if (!_disposed)
                    _logger.LogWarning("keeper: accept failed: {Error}", e.Message);
                Thread.Sleep(100);
                continue;
            }
            if (client == null)
                continue;
            using (client)
            {
                var (pid, uid) = client.PeerCredentials();
                // A daemon quick enough to connect before its starter learnt its pid waits for it.
                for (int i = 0; i < 100 && _authorized == Pending; i++)
                    Thread.Sleep(10);
                if (uid != UnixSocket.CurrentUserId || (_authorized >= 0 && pid != _authorized))
                {
                    _logger.LogWarning("keeper: refused process {Pid} (uid {Uid}): not the daemon this keeper runs", pid, uid);
                    continue;
                }
                ServeClient(client, pid);
            }
        }
    }

    /// <summary>One daemon's session with the store, until it closes its end (exits or dies).</summary>
    private void ServeClient(UnixSocket client, int pid)
    {
        while (!_disposed)
        {
            (string Verb, string Argument, FileDescriptor? Fd)? record;
            try
            {
                // The daemon is idle most of the time: wait here, not in Receive, whose timeout is an
                // exception (twice a second for the keeper's whole life, its garbage growing the
                // keeper's memory until a collection).
                if (!client.Descriptor.WaitReadable(500))
                    continue;
                record = KeeperProtocol.Receive(client, 500);
            }
            catch (TimeoutException)
            {
                continue;
            }
            catch (Exception e) when (e is NativeException or InvalidDataException)
            {
                _logger.LogWarning("keeper: dropping the connection of process {Pid}: {Error}", pid, e.Message);
                return;
            }
            if (record == null)
                return;
            var (verb, name, fd) = record.Value;
            switch (verb)
            {
                case KeeperProtocol.Store when fd != null && name.Length > 0:
                    lock (_gate)
                    {
                        if (_kept.Remove(name, out var old))
                            old.Dispose();
                        _kept[name] = fd;
                    }
                    break;
                case KeeperProtocol.Drop when fd == null:
                    lock (_gate)
                        if (_kept.Remove(name, out var dropped))
                            dropped.Dispose();
                    break;
                case KeeperProtocol.Fetch when fd == null:
                    if (!SendAll(client, pid))
                        return;
                    break;
                default:
                    fd?.Dispose();
                    _logger.LogWarning("keeper: unexpected {Verb} from process {Pid}", verb, pid);
                    break;
            }
        }
    }

    private bool SendAll(UnixSocket client, int pid)
    {
        KeyValuePair<string, FileDescriptor>[] all;
        lock (_gate)
            all = _kept.ToArray();
        try
        {
            foreach (var (name, fd) in all)
                client.Send(KeeperProtocol.Encode(KeeperProtocol.Fd, name), [fd.Number]);
            client.Send(KeeperProtocol.Encode(KeeperProtocol.End, all.Length.ToString()));
            return true;
        }
        catch (Exception e) when (e is NativeException or ObjectDisposedException)
        {
            _logger.LogWarning("keeper: handing {Count} descriptor(s) back to process {Pid} failed: {Error}", all.Length, pid, e.Message);
            return false;
        }
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _thread.Join(TimeSpan.FromSeconds(2));
        _listener.Dispose();
        Clear();
        try { Directory.Delete(_folder, recursive: true); } catch (IOException) { }
    }
}
