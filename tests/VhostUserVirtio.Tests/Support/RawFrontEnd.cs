using System.Buffers.Binary;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// A front end that follows no rules: it sends any bytes with any descriptors, stops anywhere (in a
/// header, in a payload, right after the descriptors) and reads whatever comes back. The socket is
/// non-blocking, so a back end that stops reading makes a send fail after a timeout instead of
/// hanging the test.
/// </summary>
public sealed class RawFrontEnd : IDisposable
{
    private readonly UnixSocket _socket;

    private RawFrontEnd(UnixSocket socket) => _socket = socket;

    /// <summary>Connects, retrying until <paramref name="timeout"/> (the socket may not be listening yet).</summary>
    public static RawFrontEnd Connect(string path, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(10));
        while (true)
        {
            try
            {
                var socket = UnixSocket.Connect(path, nonBlocking: true);
                return new RawFrontEnd(socket);
            }
            catch (NativeException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(20);
            }
        }
    }

    /// <summary>The back end closed the connection (or a send found it gone).</summary>
    public bool PeerClosed { get; private set; }

    /// <summary>Replies whose header was not exactly REPLY|version 1, as "request:flags" (a back end must never send those).</summary>
    public List<string> BadReplies { get; } = new();

    /// <summary>A whole message as bytes; <paramref name="sizeField"/> lets the header lie about the payload size.</summary>
    public static byte[] Encode(uint request, uint flags, ReadOnlySpan<byte> payload, uint? sizeField = null)
    {
        var bytes = new byte[MessageHeader.Length + payload.Length];
        new MessageHeader(request, flags, sizeField ?? (uint)payload.Length).Write(bytes);
        payload.CopyTo(bytes.AsSpan(MessageHeader.Length));
        return bytes;
    }

    /// <summary>
    /// Sends bytes with descriptors attached to the first of them. False when the back end is gone
    /// or has stopped reading for <paramref name="timeoutMs"/>.
    /// </summary>
    public bool TrySend(ReadOnlySpan<byte> bytes, ReadOnlySpan<int> fds = default, int timeoutMs = 10_000)
    {
        if (PeerClosed)
            return false;
        try
        {
            _socket.Send(bytes, fds, timeoutMs);
            return true;
        }
        catch (NativeException)
        {
            PeerClosed = true; // EPIPE, ECONNRESET, or EAGAIN after the timeout
            return false;
        }
    }

    private int _featureRepliesDue;

    /// <summary>
    /// Sends one message, or its first <paramref name="cutAt"/> bytes. Descriptors go with the first byte.
    /// </summary>
    public bool SendMessage(uint request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default,
        uint? sizeField = null, int? cutAt = null)
    {
        var bytes = Encode(request, flags, payload, sizeField);
        int length = Math.Min(cutAt ?? bytes.Length, bytes.Length);
        bool sent = TrySend(bytes.AsSpan(0, length), fds);
        // A well-formed GET_FEATURES is answered like the one Sync sends; Sync must skip that answer.
        if (sent && length == bytes.Length && request == (uint)FrontendRequest.GetFeatures && fds.IsEmpty &&
            payload.IsEmpty && sizeField == null && flags is MessageHeader.Version or (MessageHeader.Version | MessageHeader.NeedReplyFlag))
            _featureRepliesDue++;
        return sent;
    }

    /// <summary>Reads one message, or null when the connection closed or nothing came within the timeout.</summary>
    public (MessageHeader Header, byte[] Payload)? ReadMessage(int timeoutMs, out bool timedOut)
    {
        timedOut = false;
        var header = new byte[MessageHeader.Length];
        var deadline = Environment.TickCount64 + timeoutMs;
        if (!ReadExactly(header, deadline, out timedOut))
            return null;
        var h = MessageHeader.Read(header);
        if (h.Size > MessageHeader.MaxPayload)
        {
            BadReplies.Add($"{h.Request}:size {h.Size}");
            return null;
        }
        var payload = new byte[h.Size];
        if (!ReadExactly(payload, deadline, out timedOut))
            return null;
        if (h.Flags != (MessageHeader.ReplyFlag | MessageHeader.Version))
            BadReplies.Add($"{(FrontendRequest)h.Request}:0x{h.Flags:x}");
        return (h, payload);
    }

    private bool ReadExactly(Span<byte> buffer, long deadline, out bool timedOut)
    {
        timedOut = false;
        var fds = new List<FileDescriptor>();
        int done = 0;
        while (done < buffer.Length)
        {
            long left = deadline - Environment.TickCount64;
            if (left <= 0 || !_socket.Descriptor.WaitReadable((int)left))
            {
                timedOut = true;
                return false;
            }
            int n;
            try
            {
                n = _socket.Receive(buffer[done..], fds, out _);
            }
            catch (NativeException)
            {
                n = 0; // ECONNRESET: as good as closed
            }
            foreach (var fd in fds)
                fd.Dispose();
            fds.Clear();
            if (n == 0)
            {
                PeerClosed = true;
                return false;
            }
            if (n > 0)
                done += n;
        }
        return true;
    }

    public enum SyncResult { Answered, Closed, TimedOut }

    /// <summary>
    /// Sends GET_FEATURES (valid in any state, always answered) and reads until its reply: every
    /// message sent before it has then been handled. Replies to earlier messages are skipped (their
    /// headers are still checked). Returns the features offered, when answered.
    /// </summary>
    public SyncResult Sync(int timeoutMs, out ulong features)
    {
        features = 0;
        if (!SendMessage((uint)FrontendRequest.GetFeatures, MessageHeader.Version, default))
            return SyncResult.Closed;
        var deadline = Environment.TickCount64 + timeoutMs;
        while (true)
        {
            var m = ReadMessage((int)Math.Max(1, deadline - Environment.TickCount64), out bool timedOut);
            if (m is not { } message)
                return timedOut ? SyncResult.TimedOut : SyncResult.Closed;
            if (message.Header.Request == (uint)FrontendRequest.GetFeatures && message.Payload.Length == 8 && --_featureRepliesDue == 0)
            {
                features = BinaryPrimitives.ReadUInt64LittleEndian(message.Payload);
                return SyncResult.Answered;
            }
        }
    }

    /// <summary>Closes at once: whatever was half sent stays half sent.</summary>
    public void Dispose() => _socket.Dispose();
}
