using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Backend.Sessions;

/// <summary>
/// The daemon's side of its session keeper (<see cref="KeeperProtocol"/>): hands descriptors over to
/// be kept while this process lives and gets them back after a restart. Used from the control loop
/// only; every call is a short local exchange.
/// </summary>
public sealed class DescriptorKeeper : IDisposable
{
    private const int FetchTimeoutMs = 10_000;
    private readonly UnixSocket _socket;

    private DescriptorKeeper(UnixSocket socket, string path)
    {
        _socket = socket;
        Path = path;
    }

    public string Path { get; }

    public static DescriptorKeeper Connect(string path) => new(UnixSocket.ConnectRecords(path), path);

    /// <summary>Everything kept, by name; the caller owns the descriptors.</summary>
    public Dictionary<string, FileDescriptor> Fetch()
    {
        _socket.Send(KeeperProtocol.Encode(KeeperProtocol.Fetch));
        var kept = new Dictionary<string, FileDescriptor>();
        try
        {
            while (true)
            {
                var record = KeeperProtocol.Receive(_socket, FetchTimeoutMs) ?? throw new IOException("the session keeper closed the connection");
                if (record.Verb == KeeperProtocol.End)
                    return kept;
                if (record.Verb != KeeperProtocol.Fd || record.Fd == null)
                {
                    record.Fd?.Dispose();
                    throw new InvalidDataException($"unexpected {record.Verb} from the session keeper");
                }
                if (kept.Remove(record.Argument, out var duplicate))
                    duplicate.Dispose();
                kept[record.Argument] = record.Fd;
            }
        }
        catch
        {
            foreach (var fd in kept.Values)
                fd.Dispose();
            throw;
        }
    }

    /// <summary>Hands a copy of <paramref name="fd"/> over (the caller keeps its own).</summary>
    public void Store(string name, FileDescriptor fd) =>
        _socket.Send(KeeperProtocol.Encode(KeeperProtocol.Store, name), [fd.Number]);

    public void Drop(string name) => _socket.Send(KeeperProtocol.Encode(KeeperProtocol.Drop, name));

    public void Dispose() => _socket.Dispose();
}
