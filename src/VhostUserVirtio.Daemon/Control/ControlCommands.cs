using System.Buffers;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Group;

namespace VhostUserVirtio.Daemon.Control;

/// <summary>Facts about the running daemon that do not change while it runs.</summary>
internal sealed record DaemonInfo(int Pid, string Version, DateTimeOffset Started, string SocketDirectory, IReadOnlyList<WorkerInfo> Workers);

/// <param name="QueuePairs">The group's queue pair indices this worker forwards.</param>
internal sealed record WorkerInfo(string Name, int? Cpu, IReadOnlyList<int> QueuePairs);

/// <summary>
/// The control socket's commands: one request (a JSON object with "command") in, one reply object
/// out, {"ok":true,"result":...} or {"ok":false,"error":"..."}, with the request's "id" echoed when
/// it has one. Thread-safe: connections run commands concurrently. The status of the group is taken
/// on its data-path loop (<see cref="DeviceGroup.Status"/>); a stuck data path fails that command
/// only, after the loop's deadline.
/// </summary>
internal sealed class ControlCommands(Func<GroupStatus> status, LogLevelSwitch logLevel, DaemonInfo info, ILogger log)
{
    public static readonly IReadOnlyList<string> Names = ["status", "ports", "fdb", "log-level", "version"];

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull,
    };

    // Relaxed escaping: replies go to a local program, not into HTML, so "+" and non-ASCII stay readable.
    private static readonly JsonWriterOptions WriterOptions = new()
    {
        Indented = false,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Handles one request line (without its newline) and writes the reply line, newline included.</summary>
    public void Execute(ReadOnlySequence<byte> line, IBufferWriter<byte> output)
    {
        JsonElement? id = null;
        object? result;
        string? error;
        try
        {
            using var request = JsonDocument.Parse(line, new JsonDocumentOptions { MaxDepth = 8 });
            var root = request.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new ControlError("a request is a JSON object such as {\"command\":\"status\"}");
            if (root.TryGetProperty("id", out var given))
                id = given.Clone();
            if (!root.TryGetProperty("command", out var command) || command.ValueKind != JsonValueKind.String)
                throw new ControlError("the request has no \"command\" string");
            result = Run(command.GetString()!, root);
            error = null;
        }
        catch (JsonException e)
        {
            (result, error) = (null, $"not JSON: {e.Message}");
        }
        catch (ControlError e)
        {
            (result, error) = (null, e.Message);
        }
        catch (LoopStuckException e)
        {
            (result, error) = (null, $"the data path does not answer: {e.Message}");
        }
        catch (ObjectDisposedException)
        {
            (result, error) = (null, "the daemon is stopping");
        }
        Write(output, id, result, error);
    }

    /// <summary>A reply refusing the connection itself (too many clients, a line over the limit).</summary>
    public static void WriteError(IBufferWriter<byte> output, string error) => Write(output, null, null, error);

    private static void Write(IBufferWriter<byte> output, JsonElement? id, object? result, string? error)
    {
        using (var w = new Utf8JsonWriter(output, WriterOptions))
        {
            w.WriteStartObject();
            if (id is { } i)
            {
                w.WritePropertyName("id");
                i.WriteTo(w);
            }
            w.WriteBoolean("ok", error == null);
            if (error != null)
                w.WriteString("error", error);
            else
            {
                w.WritePropertyName("result");
                JsonSerializer.Serialize(w, result, Json);
            }
            w.WriteEndObject();
        }
        // Compact JSON never contains a raw newline (strings escape it), so this ends the reply.
        output.Write("\n"u8);
    }

    private object Run(string command, JsonElement request) => command switch
    {
        "status" => StatusResult(),
        "ports" => PortsResult(),
        "fdb" => FdbResult(),
        "log-level" => LogLevelResult(request),
        "version" => new { version = info.Version },
        _ => throw new ControlError($"unknown command '{Printable(command)}'; commands: {string.Join(", ", Names)}"),
    };

    private object StatusResult()
    {
        var s = status();
        var devices = s.Ports.Where(p => p.Queues != null).ToList();
        return new
        {
            pid = info.Pid,
            version = info.Version,
            started = info.Started,
            uptimeSeconds = (long)(DateTimeOffset.UtcNow - info.Started).TotalSeconds,
            socketDirectory = info.SocketDirectory,
            devices = new { total = devices.Count, connected = devices.Count(p => p.Connected), names = devices.Where(p => p.Connected).Select(p => p.Name) },
            uplink = s.Ports.FirstOrDefault(p => p.Queues == null)?.Name,
            workers = info.Workers.Select(w => new { name = w.Name, cpu = w.Cpu, queuePairs = w.QueuePairs }),
            macs = s.MacTable.Count,
            floods = s.Floods,
            logLevel = LogSetup.Name(logLevel.Level),
        };
    }

    private object PortsResult()
    {
        var s = status();
        return new
        {
            ports = s.Ports.Select(p => new
            {
                name = p.Name,
                socket = p.Socket.Length == 0 ? null : p.Socket,
                kind = p.Queues == null ? "uplink" : "vhost-user",
                connected = p.Connected,
                link = p.LinkUp ? "up" : "down",
                mac = p.Mac,
                trusted = p.Trusted,
                legacyDriven = p.LegacyDriven,
                mtu = p.Queues == null ? (int?)null : p.Mtu,
                queuePairs = p.Queues == null ? (int?)null : p.QueuePairs,
                activePairs = p.Queues == null ? (int?)null : p.ActivePairs,
                queues = p.Queues?.Select(q => new { index = q.Index, size = q.Size, started = q.Started, enabled = q.Enabled, fault = q.Fault }),
                counters = new
                {
                    txPackets = p.Counters.TxPackets,
                    txBytes = p.Counters.TxBytes,
                    rxPackets = p.Counters.RxPackets,
                    rxBytes = p.Counters.RxBytes,
                    learnedMacs = p.Counters.LearnedMacs,
                    macsNotLearned = p.Counters.MacsNotLearned,
                    offloads = p.Counters.Offloads,
                },
                drops = p.Counters.Drops,
            }),
            floods = s.Floods,
            droppedWhileStopped = s.DroppedWhileStopped,
        };
    }

    private object FdbResult()
    {
        var s = status();
        return new { count = s.MacTable.Count, entries = s.MacTable.Select(e => new { mac = e.Mac, port = e.Port, ageMs = e.AgeMs }) };
    }

    private object LogLevelResult(JsonElement request)
    {
        var previous = logLevel.Level;
        if (request.TryGetProperty("level", out var given))
        {
            if (given.ValueKind != JsonValueKind.String || !LogSetup.Levels.TryGetValue(given.GetString()!, out var level))
                throw new ControlError($"\"level\" must be one of {string.Join(", ", LogSetup.Levels.Keys)}");
            logLevel.Level = level;
            // Logged at the level that is sure to show either way, so the log says why it changed volume.
            log.Log(level > previous ? level : previous, "log level set to {Level} (was {Previous}) through the control socket",
                LogSetup.Name(level), LogSetup.Name(previous));
        }
        return new { level = LogSetup.Name(logLevel.Level), previous = LogSetup.Name(previous) };
    }

    /// <summary>A client's text echoed in an error: cut short and stripped of control characters.</summary>
    private static string Printable(string text)
    {
        var s = new string(text.Take(64).Select(c => char.IsControl(c) ? '?' : c).ToArray());
        return text.Length > 64 ? s + "…" : s;
    }

    private sealed class ControlError(string message) : Exception(message);
}
