using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Protocol;

/// <summary>
/// One received vhost-user message: header, payload copy, and the descriptors that came with it.
/// The message owns the descriptors until a handler takes them (<see cref="TakeFd"/>); Dispose closes
/// whatever was not taken, so no received descriptor can leak.
/// </summary>
public sealed class Message : IDisposable
{
    private readonly List<FileDescriptor> _fds;

    public Message(MessageHeader header, byte[] payload, List<FileDescriptor> fds)
    {
        Header = header;
        Payload = payload;
        _fds = fds;
    }

    public MessageHeader Header { get; }
    public FrontendRequest Request => (FrontendRequest)Header.Request;
    public byte[] Payload { get; }
    public int FdCount => _fds.Count;

    public ulong PayloadU64 => BitConverter.ToUInt64(Payload);

    /// <summary>Transfers ownership of descriptor <paramref name="index"/> to the caller.</summary>
    public FileDescriptor TakeFd(int index)
    {
        var fd = _fds[index] ?? throw new InvalidOperationException($"descriptor {index} already taken");
        _fds[index] = null!;
        return fd;
    }

    public void Dispose()
    {
        foreach (var fd in _fds)
            fd?.Dispose();
        _fds.Clear();
    }
}
