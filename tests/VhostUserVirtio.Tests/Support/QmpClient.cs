using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace VhostUserVirtio.Tests.Support;

/// <summary>A QMP command QEMU answered with an error: its class (e.g. GenericError) and description.</summary>
public sealed class QmpException(string command, string errorClass, string description)
    : Exception($"QMP {command} failed: {errorClass}: {description}")
{
    public string Command { get; } = command;
    public string ErrorClass { get; } = errorClass;
    public string Description { get; } = description;
}

/// <summary>An asynchronous QMP event (e.g. MIGRATION, RESUME) with QEMU's timestamp.</summary>
public sealed record QmpEvent(string Name, JsonElement Data, DateTimeOffset Timestamp);

/// <summary>
/// A QEMU Machine Protocol client over a Unix socket (QEMU started with
/// <c>-qmp unix:PATH,server=on,wait=off</c>): reads the greeting, enters command mode with
/// qmp_capabilities, then runs commands one at a time. A reader thread matches replies to commands
/// by id and keeps every event in <see cref="Events"/>.
/// </summary>
public sealed class QmpClient : IDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly Thread _reader;
    private readonly object _gate = new();
    private readonly Dictionary<string, JsonElement> _replies = [];
    private readonly List<QmpEvent> _events = [];
    private readonly SemaphoreSlim _commandLock = new(1, 1);
    private JsonElement? _greeting;
    private string? _closedReason;
    private long _nextId;

    private QmpClient(Socket socket, string path)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        SocketPath = path;
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = "qmp " + Path.GetFileName(path) };
        _reader.Start();
    }

    public string SocketPath { get; }
    /// <summary>QEMU's version as its greeting states it, e.g. 7.2.22.</summary>
    public string Version { get; private set; } = "";
    public IReadOnlyList<QmpEvent> Events { get { lock (_gate) return [.. _events]; } }

    /// <summary>
    /// Connects, retrying while QEMU has not created the socket yet, reads the greeting and sends
    /// qmp_capabilities. Fails after <paramref name="timeout"/>.
    /// </summary>
    public static QmpClient Connect(string socketPath, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                socket.Connect(new UnixDomainSocketEndPoint(socketPath));
            }
            catch (SocketException) when (clock.Elapsed < timeout)
            {
                socket.Dispose();
                Thread.Sleep(50);
                continue;
            }
            catch
            {
                socket.Dispose();
                throw;
            }
            var client = new QmpClient(socket, socketPath);
            try
            {
                client.Handshake(timeout - clock.Elapsed > TimeSpan.FromSeconds(5) ? timeout - clock.Elapsed : TimeSpan.FromSeconds(5));
                return client;
            }
            catch
            {
                client.Dispose();
                throw;
            }
        }
    }

    private void Handshake(TimeSpan timeout)
    {
        lock (_gate)
        {
            var deadline = Stopwatch.StartNew();
            while (_greeting == null && _closedReason == null && deadline.Elapsed < timeout)
                Monitor.Wait(_gate, TimeSpan.FromMilliseconds(100));
            if (_greeting is not JsonElement greeting)
                throw new TimeoutException($"no QMP greeting on {SocketPath}: {_closedReason ?? "timed out"}");
            if (greeting.TryGetProperty("QMP", out var qmp) && qmp.TryGetProperty("version", out var v) && v.TryGetProperty("qemu", out var q))
                Version = $"{q.GetProperty("major").GetInt32()}.{q.GetProperty("minor").GetInt32()}.{q.GetProperty("micro").GetInt32()}";
        }
        Execute("qmp_capabilities", timeout: timeout);
    }

    /// <summary>Runs <paramref name="command"/> and returns its "return" value; throws <see cref="QmpException"/> on an error reply.</summary>
    /// <param name="arguments">An object serialised as the command's "arguments" (anonymous types work), or null.</param>
    public JsonElement Execute(string command, object? arguments = null, TimeSpan? timeout = null)
    {
        var reply = Send(command, arguments, timeout ?? TimeSpan.FromSeconds(30));
        if (reply.TryGetProperty("error", out var error))
            throw new QmpException(command,
                error.TryGetProperty("class", out var c) ? c.GetString() ?? "" : "",
                error.TryGetProperty("desc", out var d) ? d.GetString() ?? "" : error.ToString());
        return reply.TryGetProperty("return", out var r) ? r : default;
    }

    private JsonElement Send(string command, object? arguments, TimeSpan timeout)
    {
        _commandLock.Wait();
        try
        {
            var id = "c" + Interlocked.Increment(ref _nextId);
            var message = new JsonObject { ["execute"] = command, ["id"] = id };
            if (arguments != null)
                message["arguments"] = JsonSerializer.SerializeToNode(arguments);
            var bytes = Encoding.UTF8.GetBytes(message.ToJsonString() + "\n");
            lock (_gate)
            {
                if (_closedReason != null)
                    throw new IOException($"QMP {SocketPath} is closed ({_closedReason}); cannot run {command}");
            }
            _stream.Write(bytes);
            var clock = Stopwatch.StartNew();
            lock (_gate)
            {
                while (true)
                {
                    if (_replies.Remove(id, out var reply))
                        return reply;
                    if (_closedReason != null)
                        throw new IOException($"QMP {SocketPath} closed ({_closedReason}) before answering {command}");
                    var left = timeout - clock.Elapsed;
                    if (left <= TimeSpan.Zero)
                        throw new TimeoutException($"QMP {command}: no reply within {timeout.TotalSeconds:F0} s");
                    Monitor.Wait(_gate, left < TimeSpan.FromMilliseconds(200) ? left : TimeSpan.FromMilliseconds(200));
                }
            }
        }
        finally
        {
            _commandLock.Release();
        }
    }

    /// <summary>The first event named <paramref name="name"/> (seen before or after the call) that <paramref name="match"/> accepts, or null on timeout.</summary>
    public QmpEvent? WaitForEvent(string name, TimeSpan timeout, Func<JsonElement, bool>? match = null)
    {
        var clock = Stopwatch.StartNew();
        lock (_gate)
        {
            while (true)
            {
                var found = _events.FirstOrDefault(e => e.Name == name && (match == null || match(e.Data)));
                if (found != null)
                    return found;
                var left = timeout - clock.Elapsed;
                if (left <= TimeSpan.Zero || _closedReason != null)
                    return null;
                Monitor.Wait(_gate, left < TimeSpan.FromMilliseconds(200) ? left : TimeSpan.FromMilliseconds(200));
            }
        }
    }

    private void ReadLoop()
    {
        string reason = "end of stream";
        try
        {
            using var reader = new StreamReader(_stream, new UTF8Encoding(false), false, 4096, leaveOpen: true);
            while (reader.ReadLine() is string line)
            {
                if (string.IsNullOrWhiteSpace(line))
                    continue;
                var message = JsonDocument.Parse(line).RootElement.Clone();
                lock (_gate)
                {
                    if (message.TryGetProperty("QMP", out _))
                        _greeting = message;
                    else if (message.TryGetProperty("event", out var name))
                        _events.Add(new QmpEvent(name.GetString() ?? "", message.TryGetProperty("data", out var d) ? d : default, Timestamp(message)));
                    else if (message.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String)
                        _replies[id.GetString()!] = message;
                    Monitor.PulseAll(_gate);
                }
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or JsonException or SocketException)
        {
            reason = e.Message;
        }
        lock (_gate)
        {
            _closedReason = reason;
            Monitor.PulseAll(_gate);
        }
    }

    private static DateTimeOffset Timestamp(JsonElement message)
    {
        if (!message.TryGetProperty("timestamp", out var t))
            return DateTimeOffset.UtcNow;
        return DateTimeOffset.FromUnixTimeMilliseconds(t.GetProperty("seconds").GetInt64() * 1000
            + t.GetProperty("microseconds").GetInt64() / 1000);
    }

    public void Dispose()
    {
        try { _socket.Shutdown(SocketShutdown.Both); }
        catch (SocketException) { }
        catch (ObjectDisposedException) { }
        _stream.Dispose();
        _socket.Dispose();
        _reader.Join(TimeSpan.FromSeconds(5));
        _commandLock.Dispose();
    }
}
