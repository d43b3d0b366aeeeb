using System.Text;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Backend.Sessions;

/// <summary>
/// The records a daemon and its session keeper exchange over a SOCK_SEQPACKET socket: one UTF-8
/// line per record, with at most one descriptor attached.
/// <list type="bullet">
/// <item>STORE name + fd: keep this descriptor under this name (replacing one kept there).</item>
/// <item>DROP name: close the descriptor kept under this name.</item>
/// <item>FETCH: the keeper answers FD name + fd for every kept descriptor, then END count.</item>
/// </list>
/// Records are processed in order, so a STORE sent before the daemon dies is kept even if the keeper
/// reads it afterwards.
/// </summary>
public static class KeeperProtocol
{
    /// <summary>Set by the keeper for the daemon it runs: the path of its socket.</summary>
    public const string EnvironmentVariable = "VHOST_VIRTIO_KEEPER";

    public const string Store = "STORE", Drop = "DROP", Fetch = "FETCH", Fd = "FD", End = "END";

    /// <summary>Longest record (verb, space, name).</summary>
    public const int MaxRecord = 1024;

    public static byte[] Encode(string verb, string? name = null) =>
        Encoding.UTF8.GetBytes(name == null ? verb : $"{verb} {name}");

    /// <summary>Splits a record into verb and argument; null when it is not a well-formed record.</summary>
    public static (string Verb, string Argument)? Decode(ReadOnlySpan<byte> record)
    {
        if (record.Length == 0 || record.Length > MaxRecord)
            return null;
        string text;
        try
        {
            text = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(record);
        }
        catch (DecoderFallbackException)
        {
            return null;
        }
        if (text.Contains('\0') || text.Contains('\n'))
            return null;
        int space = text.IndexOf(' ');
        return space < 0 ? (text, "") : (text[..space], text[(space + 1)..]);
    }

    /// <summary>Receives one record and its descriptor (if any); null at end of stream. Blocks up to <paramref name="timeoutMs"/>.</summary>
    public static (string Verb, string Argument, FileDescriptor? Fd)? Receive(UnixSocket socket, int timeoutMs)
    {
        var buffer = new byte[MaxRecord + 1];
        var fds = new List<FileDescriptor>();
        while (true)
        {
            int n = socket.Receive(buffer, fds, out bool truncated, maxFds: 1);
            if (n == -1)
            {
                if (!socket.Descriptor.WaitReadable(timeoutMs))
                    throw new TimeoutException($"no answer within {timeoutMs} ms");
                continue;
            }
            if (n == 0 && fds.Count == 0)
                return null;
            var record = n <= MaxRecord && !truncated ? Decode(buffer.AsSpan(0, n)) : null;
            if (record == null || fds.Count > 1)
            {
                foreach (var fd in fds)
                    fd.Dispose();
                throw new InvalidDataException("malformed record");
            }
            return (record.Value.Verb, record.Value.Argument, fds.Count == 1 ? fds[0] : null);
        }
    }
}
