using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Protocol;

/// <summary>Frames and sends messages (requests from a front end, replies from a back end).</summary>
public static class MessageWriter
{
    /// <summary>
    /// Sends header + payload in one sendmsg, with <paramref name="fds"/> attached, waiting up to
    /// <paramref name="timeoutMs"/> for room. For front ends; a back end queues its replies
    /// (<see cref="ReplyQueue"/>) so that it never waits for a peer.
    /// </summary>
    public static void Send(UnixSocket socket, uint request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default,
        int timeoutMs = 5000)
    {
        Span<byte> frame = stackalloc byte[MessageHeader.Length + payload.Length];
        Frame(frame, request, flags, payload);
        socket.Send(frame, fds, timeoutMs);
    }

    /// <summary>Writes header + payload into <paramref name="destination"/>; returns the frame length.</summary>
    public static int Frame(Span<byte> destination, uint request, uint flags, ReadOnlySpan<byte> payload)
    {
        new MessageHeader(request, flags, (uint)payload.Length).Write(destination);
        payload.CopyTo(destination[MessageHeader.Length..]);
        return MessageHeader.Length + payload.Length;
    }

    /// <summary>Flags of every back-end reply: exactly REPLY|version.</summary>
    public const uint ReplyFlags = MessageHeader.ReplyFlag | MessageHeader.Version;
}
