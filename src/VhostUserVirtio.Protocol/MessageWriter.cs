using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Protocol;

/// <summary>Frames and sends messages (requests from a front end, replies from a back end).</summary>
public static class MessageWriter
{
    /// <summary>Sends header + payload in one sendmsg, with <paramref name="fds"/> attached.</summary>
    public static void Send(UnixSocket socket, uint request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default,
        int timeoutMs = 5000)
    {
        Span<byte> frame = stackalloc byte[MessageHeader.Length + payload.Length];
        new MessageHeader(request, flags, (uint)payload.Length).Write(frame);
        payload.CopyTo(frame[MessageHeader.Length..]);
        socket.Send(frame, fds, timeoutMs);
    }

    /// <summary>A back-end reply: flags exactly REPLY|version, same request code.</summary>
    public static void Reply(UnixSocket socket, FrontendRequest request, ReadOnlySpan<byte> payload, int timeoutMs = 5000) =>
        Send(socket, (uint)request, MessageHeader.ReplyFlag | MessageHeader.Version, payload, default, timeoutMs);
}
