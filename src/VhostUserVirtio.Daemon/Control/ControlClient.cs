using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Reflection;
using System.Text.Json;

namespace VhostUserVirtio.Daemon.Control;

/// <summary>The daemon could not be reached, or did not answer as the protocol says.</summary>
internal sealed class ControlUnreachableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The client side of the control socket: one request line out, one reply line back.</summary>
internal static class ControlClient
{
    /// <summary>Largest reply the client reads (a full MAC table of a large group fits many times over).</summary>
    private const int MaxReplyBytes = 64 << 20;

    public static string Version { get; } =
        typeof(ControlClient).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
        ?? typeof(ControlClient).Assembly.GetName().Version?.ToString() ?? "unknown";

    /// <summary>Sends <paramref name="request"/> and returns the reply object (ok or not).</summary>
    public static async Task<JsonDocument> RequestAsync(string path, object request, TimeSpan timeout)
    {
        using var deadline = new CancellationTokenSource(timeout);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), deadline.Token);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException)
        {
            socket.Dispose();
            // .NET reports a missing socket file as "cannot assign requested address"; say what it means.
            string why = !File.Exists(path) ? "no such socket (is the daemon running, with this --socket-dir?)"
                : e is SocketException { SocketErrorCode: SocketError.ConnectionRefused } ? "nobody listens there (a daemon that stopped uncleanly?)"
                : e is SocketException s ? s.Message : "timed out";
            throw new ControlUnreachableException($"cannot reach the daemon at {path}: {why}", e);
        }
        await using var stream = new NetworkStream(socket, ownsSocket: true);
        var output = PipeWriter.Create(stream, new StreamPipeWriterOptions(leaveOpen: true));
        var input = PipeReader.Create(stream, new StreamPipeReaderOptions(leaveOpen: true));
        try
        {
            output.Write(JsonSerializer.SerializeToUtf8Bytes(request));
            output.Write("\n"u8);
            await output.FlushAsync(deadline.Token);
            while (true)
            {
                var read = await input.ReadAsync(deadline.Token);
                var buffer = read.Buffer;
                if (buffer.PositionOf((byte)'\n') is { } end)
                    return JsonDocument.Parse(buffer.Slice(0, end));
                if (buffer.Length > MaxReplyBytes)
                    throw new ControlUnreachableException($"the reply from {path} is longer than {MaxReplyBytes} bytes");
                if (read.IsCompleted)
                    throw new ControlUnreachableException($"the daemon at {path} closed the connection without a reply");
                input.AdvanceTo(buffer.Start, buffer.End);
            }
        }
        catch (OperationCanceledException e)
        {
            throw new ControlUnreachableException($"no reply from {path} within {timeout.TotalSeconds:0} s", e);
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            throw new ControlUnreachableException($"lost the connection to {path}: {e.Message}", e);
        }
        catch (JsonException e)
        {
            throw new ControlUnreachableException($"the daemon at {path} sent a reply that is not JSON: {e.Message}", e);
        }
        finally
        {
            await input.CompleteAsync();
            await output.CompleteAsync();
        }
    }
}
