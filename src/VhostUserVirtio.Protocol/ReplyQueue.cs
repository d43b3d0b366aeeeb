using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Protocol;

/// <summary>
/// A back end's replies to one front end, sent without ever waiting: what the socket does not take
/// at once stays here until it has room again (the owner watches for writability and calls
/// <see cref="Flush"/>). A front end that does not read its replies thus stalls only itself. The
/// owner stops reading that front end's requests while anything is pending, so the queue holds at
/// most about one reply; the cap is a guard, not a working limit.
/// </summary>
public sealed class ReplyQueue : IDisposable
{
    /// <summary>Pending bytes above which the front end is deemed not to read at all.</summary>
    public const int DefaultCapacity = 64 * 1024;

    private readonly UnixSocket _socket;
    private readonly int _capacity;
    private byte[] _buffer = Array.Empty<byte>();
    private int _start;
    private int _end;
    // A descriptor that goes with the reply starting at _fdAt in the buffer (GET_INFLIGHT_FD): sent
    // with that reply's first byte, owned here until then.
    private FileDescriptor? _fd;
    private int _fdAt;

    public ReplyQueue(UnixSocket socket, int capacity = DefaultCapacity)
    {
        _socket = socket;
        _capacity = capacity;
    }

    /// <summary>Bytes queued and not yet taken by the socket.</summary>
    public int Pending => _end - _start;

    public bool IsEmpty => _end == _start;

    /// <summary>
    /// Sends a reply (flags exactly REPLY|version, same request code), or queues what the socket does
    /// not take now. Returns false when that would exceed the cap: the caller drops the connection.
    /// Throws NativeException when the connection is gone.
    /// </summary>
    /// <param name="fd">A descriptor to send with the reply, or null; taken (closed once sent, or by <see cref="Dispose"/>).</param>
    public bool Enqueue(FrontendRequest request, ReadOnlySpan<byte> payload, FileDescriptor? fd = null)
    {
        if (fd != null && _fd != null)
        {
            fd.Dispose(); // one reply with a descriptor at a time: the owner reads no request meanwhile
            return false;
        }
        Span<byte> frame = stackalloc byte[MessageHeader.Length + payload.Length];
        MessageWriter.Frame(frame, (uint)request, MessageWriter.ReplyFlags, payload);
        int sent = 0;
        if (IsEmpty) // never overtake what is queued
        {
            try
            {
                sent = fd == null ? _socket.TrySend(frame) : _socket.TrySend(frame, [fd.Number]);
            }
            catch
            {
                fd?.Dispose();
                throw;
            }
        }
        if (sent > 0 && fd != null)
        {
            fd.Dispose(); // the peer has its own copy now
            fd = null;
        }
        var rest = frame[sent..];
        if (rest.IsEmpty)
            return true;
        if (Pending + rest.Length > _capacity)
        {
            fd?.Dispose();
            return false;
        }
        if (_buffer.Length - _end < rest.Length)
        {
            var grown = new byte[Math.Max(Pending + rest.Length, Math.Min(_capacity, Math.Max(256, _buffer.Length * 2)))];
            _buffer.AsSpan(_start, Pending).CopyTo(grown);
            _fdAt -= _start;
            _end = Pending;
            _start = 0;
            _buffer = grown;
        }
        if (fd != null)
        {
            _fd = fd;
            _fdAt = _end;
        }
        rest.CopyTo(_buffer.AsSpan(_end));
        _end += rest.Length;
        return true;
    }

    /// <summary>Closes a descriptor still waiting to be sent (the connection is gone).</summary>
    public void Dispose()
    {
        _fd?.Dispose();
        _fd = null;
    }

    /// <summary>Sends what the socket takes now; true when nothing is left. Throws NativeException when the connection is gone.</summary>
    public bool Flush()
    {
        if (IsEmpty)
            return true;
        if (_fd == null)
            _start += _socket.TrySend(_buffer.AsSpan(_start, Pending));
        else if (_start < _fdAt)
            _start += _socket.TrySend(_buffer.AsSpan(_start, _fdAt - _start)); // what goes before the descriptor's reply
        else
        {
            int sent = _socket.TrySend(_buffer.AsSpan(_start, Pending), [_fd.Number]);
            if (sent > 0)
            {
                _fd.Dispose();
                _fd = null;
            }
            _start += sent;
        }
        if (IsEmpty)
            _start = _end = 0;
        return IsEmpty;
    }
}
