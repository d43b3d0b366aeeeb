using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Protocol;

/// <summary>
/// Reassembles messages from a non-blocking stream socket. It never reads past the end of the current
/// message, so descriptors (which travel with a message's first bytes) always land on the right
/// message. A stalled peer costs nothing: the reader just keeps its partial state.
/// Only the read that takes a message's first bytes makes room for descriptors, and for exactly
/// <see cref="MessageHeader.MaxFds"/>: descriptors sent with any later byte are dropped by the kernel
/// (never installed in this process) and the stream is corrupt. So one message can never make this
/// process hold more than that many, however the peer splits it.
/// </summary>
public sealed class MessageReader : IDisposable
{
    private readonly UnixSocket _socket;
    private readonly byte[] _header = new byte[MessageHeader.Length];
    private int _headerFilled;
    private byte[]? _payload;
    private int _payloadFilled;
    private MessageHeader _current;
    private List<FileDescriptor> _fds = new();
    // Once framing is lost it cannot be found again: every later read reports the same corruption.
    private string? _corrupt;

    public MessageReader(UnixSocket socket) => _socket = socket;

    public enum Status
    {
        /// <summary>A whole message is ready.</summary>
        Message,
        /// <summary>Nothing more to read now.</summary>
        WouldBlock,
        /// <summary>The peer closed the connection.</summary>
        Closed,
        /// <summary>The stream is corrupt (bad header or too many descriptors); the connection must be dropped.</summary>
        Corrupt,
    }

    /// <summary>
    /// Reads as far as possible. On <see cref="Status.Message"/> the message is returned and owned by
    /// the caller; on <see cref="Status.Corrupt"/> <paramref name="error"/> says why.
    /// </summary>
    public Status TryRead(out Message? message, out string? error)
    {
        message = null;
        error = _corrupt;
        if (error != null)
            return Status.Corrupt;
        while (_headerFilled < MessageHeader.Length)
        {
            bool first = _headerFilled == 0;
            int n = _socket.Receive(_header.AsSpan(_headerFilled), _fds, out bool truncated, first ? MessageHeader.MaxFds : 0);
            if (n < 0)
                return Status.WouldBlock;
            if (n == 0)
                return Status.Closed;
            if (truncated)
            {
                return Corrupt(first
                    ? $"a message carried more than {MessageHeader.MaxFds} descriptors"
                    : "descriptors were sent after the first bytes of a message", out error);
            }
            _headerFilled += n;
            if (_headerFilled == MessageHeader.Length)
            {
                _current = MessageHeader.Read(_header);
                if (_current.FramingError() is { } framing)
                    return Corrupt(framing, out error);
                _payload = _current.Size == 0 ? Array.Empty<byte>() : new byte[_current.Size];
                _payloadFilled = 0;
            }
        }

        while (_payloadFilled < _payload!.Length)
        {
            int n = _socket.Receive(_payload.AsSpan(_payloadFilled), _fds, out bool truncated, maxFds: 0);
            if (n < 0)
                return Status.WouldBlock;
            if (n == 0)
                return Status.Closed;
            if (truncated)
            {
                return Corrupt($"descriptors were sent after the first bytes of a {(FrontendRequest)_current.Request} message", out error);
            }
            _payloadFilled += n;
        }

        message = new Message(_current, _payload, _fds);
        _fds = new List<FileDescriptor>();
        _headerFilled = 0;
        _payload = null;
        return Status.Message;
    }

    private Status Corrupt(string why, out string error)
    {
        error = _corrupt = why;
        Reset();
        return Status.Corrupt;
    }

    private void Reset()
    {
        foreach (var fd in _fds)
            fd.Dispose();
        _fds.Clear();
        _headerFilled = 0;
        _payload = null;
    }

    public void Dispose() => Reset();
}
