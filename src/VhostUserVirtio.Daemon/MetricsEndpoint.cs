using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// The Prometheus scrape endpoint (--metrics-listen): a minimal HTTP/1.x server on exactly the
/// address it was given, answering <c>GET /metrics</c> with the text exposition and closing each
/// connection after one response. Anyone who can reach the port is an untrusted client: a request
/// is read into a fixed buffer (larger ones get 431), a client has a few seconds to send it and to
/// take the answer, and only a few connections are served at once (more are closed at accept), so a
/// slow, silent or garbage-sending client costs a bounded amount and never stops the daemon.
/// </summary>
internal sealed class MetricsEndpoint : IDisposable
{
    private const int MaxRequestBytes = 8192;
    private const int MaxConnections = 8;
    private const int MaxDrainBytes = 64 * 1024;
    private static readonly TimeSpan ClientDeadline = TimeSpan.FromSeconds(5);

    private readonly Socket _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _slots = new(MaxConnections);
    private readonly LogRateLimit _clientLimit = new();
    private Func<string>? _render;
    private ILogger? _log;
    private Task _accepting = Task.CompletedTask;

    private MetricsEndpoint(Socket listener) => _listener = listener;

    public IPEndPoint LocalEndPoint => (IPEndPoint)_listener.LocalEndPoint!;

    /// <summary>
    /// "127.0.0.1:9464", "[::1]:9464", "0.0.0.0:9464": an IP address and a port (1–65535), nothing
    /// else (no host names: the endpoint binds only where told). Returns what is wrong, or null.
    /// </summary>
    internal static string? Parse(string text, out IPEndPoint endPoint)
    {
        endPoint = new IPEndPoint(IPAddress.Loopback, 0);
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || colon == text.Length - 1)
            return "give an IP address and a port, such as 127.0.0.1:9464 or [::1]:9464";
        string host = text[..colon], port = text[(colon + 1)..];
        if (host.StartsWith('[') != host.EndsWith(']') || (host.Contains(':') && !host.StartsWith('[')))
            return "write an IPv6 address in brackets, such as [::1]:9464";
        if (!IPAddress.TryParse(host.Trim('[', ']'), out var address))
            return $"'{host}' is not an IP address (give one such as 127.0.0.1 or [::1]; host names are not resolved)";
        if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out int number) || number is < 1 or > 65535)
            return $"'{port}' is not a port (1-65535)";
        endPoint = new IPEndPoint(address, number);
        return null;
    }

    /// <summary>Binds and listens (connections wait in the backlog until <see cref="Start"/>); throws SocketException.</summary>
    public static MetricsEndpoint Bind(IPEndPoint endPoint)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (endPoint.AddressFamily == AddressFamily.InterNetworkV6)
                socket.DualMode = false; // [::] means IPv6 only: bind exactly what was asked
            socket.Bind(endPoint);
            socket.Listen(16);
            return new MetricsEndpoint(socket);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Starts answering scrapes with <paramref name="render"/>'s text.</summary>
    public void Start(Func<string> render, ILogger log)
    {
        _render = render;
        _log = log;
        _accepting = Task.Run(AcceptLoop);
    }

    private async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e)
            {
                // Out of descriptors or the like: back off instead of spinning on the error.
                _log!.LogLimited(_clientLimit, LogLevel.Warning, "metrics endpoint: accept failed: {Error}", e.Message);
                await Task.Delay(100).ConfigureAwait(false);
                continue;
            }
            if (!_slots.Wait(0))
            {
                client.Dispose(); // busy: a scraper retries at its next interval
                continue;
            }
            _ = Task.Run(async () =>
            {
                try
                {
                    await Serve(client).ConfigureAwait(false);
                }
                finally
                {
                    client.Dispose();
                    _slots.Release();
                }
            });
        }
    }

    private async Task Serve(Socket client)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        deadline.CancelAfter(ClientDeadline);
        try
        {
            var (status, body) = await ReadRequest(client, deadline.Token).ConfigureAwait(false) switch
            {
                RequestLine { Method: "GET", Path: "/metrics" } => (200, _render!()),
                RequestLine { Path: "/metrics" } => (405, "only GET\n"),
                RequestLine { Path: not null } => (404, "the metrics are at /metrics\n"),
                RequestLine r => (r.TooLarge ? 431 : 400, r.TooLarge ? "request too large\n" : "bad request\n"),
                null => (0, null),
            };
            if (status == 0)
                return; // closed or timed out before a request: nothing to answer
            await Reply(client, status, body, deadline.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or IOException or ObjectDisposedException)
        {
            // A client that stalls, resets or goes away: its connection closes, nothing else changes.
        }
        catch (Exception e)
        {
            // Never down the daemon for a scrape; say why once in a while.
            _log!.LogLimited(_clientLimit, LogLevel.Warning, "metrics endpoint: a scrape failed: {Error}", e.Message);
        }
    }

    private sealed record RequestLine(string? Method, string? Path, bool TooLarge = false);

    /// <summary>Reads the request head (up to the blank line) and parses its first line; null if the client sent nothing whole.</summary>
    private static async Task<RequestLine?> ReadRequest(Socket client, CancellationToken token)
    {
        var buffer = new byte[MaxRequestBytes];
        int filled = 0;
        while (true)
        {
            if (filled == buffer.Length)
                return new RequestLine(null, null, TooLarge: true);
            int n = await client.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, token).ConfigureAwait(false);
            if (n == 0)
                return null;
            filled += n;
            var head = buffer.AsSpan(0, filled);
            if (head.IndexOf("\r\n\r\n"u8) >= 0 || head.IndexOf("\n\n"u8) >= 0)
                break;
        }
        var text = Encoding.ASCII.GetString(buffer, 0, filled);
        var parts = text[..text.IndexOf('\n')].TrimEnd('\r').Split(' ');
        if (parts.Length != 3 || !parts[2].StartsWith("HTTP/1.", StringComparison.Ordinal) || parts[1].Length == 0)
            return new RequestLine(null, null);
        int query = parts[1].IndexOf('?');
        return new RequestLine(parts[0], query < 0 ? parts[1] : parts[1][..query]);
    }

    private static async Task Reply(Socket client, int status, string? body, CancellationToken token)
    {
        string reason = status switch { 200 => "OK", 404 => "Not Found", 405 => "Method Not Allowed", 431 => "Request Header Fields Too Large", _ => "Bad Request" };
        var payload = Encoding.UTF8.GetBytes(body ?? "");
        string contentType = status == 200 ? Group.Metrics.PrometheusText.ContentType : "text/plain; charset=utf-8";
        var head = Encoding.ASCII.GetBytes(
            $"HTTP/1.1 {status} {reason}\r\nContent-Type: {contentType}\r\nContent-Length: {payload.Length}\r\nConnection: close\r\n" +
            (status == 405 ? "Allow: GET\r\n" : "") + "\r\n");
        await client.SendAsync(head, SocketFlags.None, token).ConfigureAwait(false);
        int sent = 0;
        while (sent < payload.Length)
            sent += await client.SendAsync(payload.AsMemory(sent), SocketFlags.None, token).ConfigureAwait(false);
        client.Shutdown(SocketShutdown.Send);
        // Closing with unread request bytes would send a reset that can overtake the answer; read
        // (a bounded amount, within the deadline) until the client closes its side.
        var sink = new byte[4096];
        for (int drained = 0; drained < MaxDrainBytes;)
        {
            int n = await client.ReceiveAsync(sink, SocketFlags.None, token).ConfigureAwait(false);
            if (n == 0)
                break;
            drained += n;
        }
    }

    /// <summary>Stops accepting and ends the connections in progress.</summary>
    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        try
        {
            _accepting.Wait(TimeSpan.FromSeconds(5));
        }
        catch (AggregateException)
        {
            // The accept loop catches what it expects; anything else is moot at shutdown.
        }
        // _stop stays undisposed: connections still finishing link their deadlines to it.
    }
}
