using System.IO.Pipelines;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Nerdbank.Streams;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Daemon;
using VhostUserVirtio.Daemon.Control;
using VhostUserVirtio.Group;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The control socket's protocol, in process: the per-connection handler served over one end of
/// Nerdbank.Streams' FullDuplexStream pair, a test client on the other. The group status is a fixed
/// snapshot, so each reply's shape can be checked exactly.
/// </summary>
[Trait("tier", "unit")]
public sealed class ControlProtocolTests
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(20);

    private static readonly GroupStatus Sample = new(
        [
            new PortStatus("pf", "/s/pf.sock", false, true, "02:56:56:00:00:00", new CounterSnapshot(0, 0, 0, 0, new Dictionary<string, long>()),
                QueuePairs: 1, ActivePairs: 1, Mtu: 1500, Queues: [new QueueStatus(0, 0, false, false, null)]),
            new PortStatus("vf1", "/s/vf1.sock", true, true, "02:56:56:00:00:01",
                new CounterSnapshot(5, 300, 7, 420, new Dictionary<string, long> { ["NoRxBuffers"] = 3, ["SpoofedSource"] = 1 }, LearnedMacs: 1),
                Trusted: false, QueuePairs: 2, ActivePairs: 1, Mtu: 9000,
                Queues: [new QueueStatus(0, 256, true, true, null), new QueueStatus(1, 256, true, true, "descriptor loop")]),
            new PortStatus("tap0", "", true, true, null, new CounterSnapshot(1, 60, 0, 0, new Dictionary<string, long>())),
        ],
        [new MacEntry("02:56:56:00:00:01", "vf1", 1500)], Floods: 4, DroppedWhileStopped: 2);

    private readonly LogLevelSwitch _level = new(LogLevel.Information);

    private ControlCommands Commands(Func<GroupStatus>? status = null) => new(status ?? (() => Sample), _level,
        new DaemonInfo(4242, "9.9.9", DateTimeOffset.UtcNow.AddSeconds(-90), "/s", [new WorkerInfo("worker0", 1, [0, 1])]), NullLogger.Instance);

    /// <summary>A served connection and the client's end of it.</summary>
    private sealed class Connection : IAsyncDisposable
    {
        public Connection(ControlCommands commands, ControlLimits? limits = null, PipeOptions? pipes = null)
        {
            var (client, server) = FullDuplexStream.CreatePair(pipes);
            Client = client;
            Reader = new StreamReader(client, Encoding.UTF8);
            Served = Task.Run(() => ControlConnection.ServeAsync(server, commands, limits ?? new ControlLimits(), NullLogger.Instance, new LogRateLimit(), CancellationToken.None));
        }

        public Stream Client { get; }
        public StreamReader Reader { get; }
        public Task Served { get; }

        public async Task Send(string text)
        {
            await Client.WriteAsync(Encoding.UTF8.GetBytes(text));
            await Client.FlushAsync();
        }

        public async Task<JsonElement> Reply()
        {
            var line = await Reader.ReadLineAsync().WaitAsync(Deadline);
            Assert.NotNull(line);
            return JsonDocument.Parse(line).RootElement;
        }

        public async Task<JsonElement> Ask(string request)
        {
            await Send(request + "\n");
            return await Reply();
        }

        public async ValueTask DisposeAsync()
        {
            await Client.DisposeAsync();
            await Served.WaitAsync(Deadline);
        }
    }

    private static JsonElement Ok(JsonElement reply)
    {
        Assert.True(reply.GetProperty("ok").GetBoolean(), reply.GetRawText());
        return reply.GetProperty("result");
    }

    private static string Error(JsonElement reply)
    {
        Assert.False(reply.GetProperty("ok").GetBoolean(), reply.GetRawText());
        return reply.GetProperty("error").GetString()!;
    }

    [Fact]
    public async Task Each_command_answers_with_one_json_line()
    {
        await using var c = new Connection(Commands());

        var status = Ok(await c.Ask("""{"command":"status","id":17}"""));
        Assert.Equal(4242, status.GetProperty("pid").GetInt32());
        Assert.Equal("9.9.9", status.GetProperty("version").GetString());
        Assert.InRange(status.GetProperty("uptimeSeconds").GetInt64(), 89, 200);
        Assert.Equal(2, status.GetProperty("devices").GetProperty("total").GetInt32());
        Assert.Equal(1, status.GetProperty("devices").GetProperty("connected").GetInt32());
        Assert.Equal("tap0", status.GetProperty("uplink").GetString());
        Assert.Equal("worker0", status.GetProperty("workers")[0].GetProperty("name").GetString());
        Assert.Equal("information", status.GetProperty("logLevel").GetString());

        var ports = Ok(await c.Ask("""{"command":"ports"}""")).GetProperty("ports");
        Assert.Equal(3, ports.GetArrayLength());
        var vf1 = ports[1];
        Assert.Equal("vf1", vf1.GetProperty("name").GetString());
        Assert.Equal("up", vf1.GetProperty("link").GetString());
        Assert.Equal("02:56:56:00:00:01", vf1.GetProperty("mac").GetString());
        Assert.False(vf1.GetProperty("trusted").GetBoolean());
        Assert.Equal(2, vf1.GetProperty("queuePairs").GetInt32());
        Assert.Equal(1, vf1.GetProperty("activePairs").GetInt32());
        Assert.Equal(9000, vf1.GetProperty("mtu").GetInt32());
        Assert.Equal("descriptor loop", vf1.GetProperty("queues")[1].GetProperty("fault").GetString());
        Assert.Equal(5, vf1.GetProperty("counters").GetProperty("txPackets").GetInt64());
        Assert.Equal(420, vf1.GetProperty("counters").GetProperty("rxBytes").GetInt64());
        Assert.Equal(3, vf1.GetProperty("drops").GetProperty("NoRxBuffers").GetInt64());
        Assert.Equal("uplink", ports[2].GetProperty("kind").GetString());
        Assert.False(ports[2].TryGetProperty("queues", out _));

        var fdb = Ok(await c.Ask("""{"command":"fdb"}"""));
        Assert.Equal(1, fdb.GetProperty("count").GetInt32());
        Assert.Equal("vf1", fdb.GetProperty("entries")[0].GetProperty("port").GetString());
        Assert.Equal(1500, fdb.GetProperty("entries")[0].GetProperty("ageMs").GetInt64());

        Assert.Equal("9.9.9", Ok(await c.Ask("""{"command":"version"}""")).GetProperty("version").GetString());

        var get = Ok(await c.Ask("""{"command":"log-level"}"""));
        Assert.Equal("information", get.GetProperty("level").GetString());
        var set = await c.Ask("""{"command":"log-level","level":"debug","id":"x"}""");
        Assert.Equal("x", set.GetProperty("id").GetString());
        Assert.Equal("debug", Ok(set).GetProperty("level").GetString());
        Assert.Equal(LogLevel.Debug, _level.Level);
        Assert.Contains("\"level\" must be one of", Error(await c.Ask("""{"command":"log-level","level":"loud"}""")));
        Assert.Equal(LogLevel.Debug, _level.Level);

        // Requests may come several to a write, CRLF-terminated, with blank lines between: one reply each, in order.
        await c.Send("{\"command\":\"version\",\"id\":1}\r\n\n{\"command\":\"version\",\"id\":2}\n");
        Assert.Equal(1, (await c.Reply()).GetProperty("id").GetInt32());
        Assert.Equal(2, (await c.Reply()).GetProperty("id").GetInt32());
    }

    [Fact]
    public async Task Garbage_gets_an_error_reply_and_the_connection_keeps_serving()
    {
        await using var c = new Connection(Commands());
        Assert.StartsWith("not JSON", Error(await c.Ask("garbage")));
        Assert.StartsWith("not JSON", Error(await c.Ask("{\"command\":")));
        Assert.StartsWith("not JSON", Error(await c.Ask("\u0001\u00ff\u0000")));
        Assert.StartsWith("not JSON", Error(await c.Ask(new string('[', 100) + new string(']', 100))));
        Assert.Contains("JSON object", Error(await c.Ask("[1,2]")));
        Assert.Contains("\"command\"", Error(await c.Ask("""{"command":5}""")));
        Assert.Contains("\"command\"", Error(await c.Ask("{}")));
        var unknown = Error(await c.Ask("{\"command\":\"reboot\\n\\u0007" + new string('x', 500) + "\"}"));
        Assert.StartsWith("unknown command 'reboot??xxx", unknown);
        Assert.True(unknown.Length < 200, unknown);
        Assert.Equal("9.9.9", Ok(await c.Ask("""{"command":"version"}""")).GetProperty("version").GetString());
    }

    [Fact]
    public async Task A_line_over_the_limit_gets_an_error_and_the_connection_is_closed()
    {
        await using var c = new Connection(Commands(), new ControlLimits { MaxLineBytes = 1024 });
        await c.Send("{\"command\":\"" + new string('a', 5000));
        Assert.Contains("longer than 1024 bytes", Error(await c.Reply()));
        Assert.Null(await c.Reader.ReadLineAsync().WaitAsync(Deadline)); // closed
        await c.Served.WaitAsync(Deadline);

        // A whole oversized line arriving in one write is refused the same way.
        await using var d = new Connection(Commands(), new ControlLimits { MaxLineBytes = 1024 });
        await d.Send("{\"command\":\"" + new string('a', 3000) + "\"}\n{\"command\":\"version\"}\n");
        Assert.Contains("longer than 1024 bytes", Error(await d.Reply()));
        Assert.Null(await d.Reader.ReadLineAsync().WaitAsync(Deadline));
    }

    [Fact]
    public async Task A_client_that_never_reads_is_dropped_while_others_are_served()
    {
        var commands = Commands();
        var limits = new ControlLimits { WriteTimeout = TimeSpan.FromSeconds(1) };
        // The transport holds at most 16 KiB unread each way, as a socket's buffers would.
        var pipes = new PipeOptions(pauseWriterThreshold: 16 * 1024, resumeWriterThreshold: 8 * 1024);
        var (client, server) = FullDuplexStream.CreatePair(pipes);
        var served = Task.Run(() => ControlConnection.ServeAsync(server, commands, limits, NullLogger.Instance, new LogRateLimit(), CancellationToken.None));

        // 20,000 requests, answered by some 20 MB of replies if they were all read.
        var request = Encoding.UTF8.GetBytes("{\"command\":\"ports\"}\n");
        const int Requests = 20_000;
        using var giveUp = new CancellationTokenSource();
        var sending = Task.Run(async () =>
        {
            try
            {
                for (int i = 0; i < Requests; i++)
                    await client.WriteAsync(request, giveUp.Token);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException or OperationCanceledException)
            {
            }
        });

        // Meanwhile another client is answered at once.
        await using (var other = new Connection(commands))
            for (int i = 0; i < 5; i++)
                Assert.Equal("9.9.9", Ok(await other.Ask("""{"command":"version"}""")).GetProperty("version").GetString());

        await served.WaitAsync(Deadline); // dropped: the handler returned
        // What the server had queued for it is bounded by the transport and one reply, not by what was asked.
        var buffer = new MemoryStream();
        await client.CopyToAsync(buffer).WaitAsync(Deadline);
        int replies = Encoding.UTF8.GetString(buffer.ToArray()).Count(ch => ch == '\n');
        Assert.InRange(buffer.Length, 1, 64 * 1024);
        Assert.InRange(replies, 1, Requests / 100);
        // The test's own writer may still wait on a transport nobody reads any more.
        giveUp.Cancel();
        await sending.WaitAsync(Deadline);
        await client.DisposeAsync();
    }

    [Fact]
    public async Task A_client_that_disconnects_mid_request_ends_only_its_connection()
    {
        int asked = 0;
        var commands = Commands(() => { Interlocked.Increment(ref asked); return Sample; });
        var c = new Connection(commands);
        await c.Send("{\"command\":\"po");
        await c.DisposeAsync(); // returns once the handler has ended
        Assert.Equal(0, asked); // half a request is never run

        // The client leaves while its reply is on the way.
        var d = new Connection(commands);
        await d.Send("{\"command\":\"ports\"}\n{\"command\":\"ports\"}\n");
        await d.DisposeAsync();

        await using var e = new Connection(commands);
        Assert.Equal(3, Ok(await e.Ask("""{"command":"ports"}""")).GetProperty("ports").GetArrayLength());
    }

    [Fact]
    public async Task A_stuck_data_path_fails_the_command_not_the_connection()
    {
        var commands = Commands(() => throw new VhostUserVirtio.Backend.LoopStuckException("worker0", "worker0 did not run posted work within 10 s"));
        await using var c = new Connection(commands);
        Assert.Contains("data path does not answer", Error(await c.Ask("""{"command":"ports"}""")));
        Assert.Equal("9.9.9", Ok(await c.Ask("""{"command":"version"}""")).GetProperty("version").GetString());
    }

    [Fact]
    public void The_log_level_switch_changes_what_the_loggers_let_through()
    {
        var level = new LogLevelSwitch(LogLevel.Information);
        using var loggers = LogSetup.CreateLoggers(level, LogFormat.Text);
        var log = loggers.CreateLogger("test");
        Assert.False(log.IsEnabled(LogLevel.Debug));
        Assert.True(log.IsEnabled(LogLevel.Information));
        level.Level = LogLevel.Debug;
        Assert.True(log.IsEnabled(LogLevel.Debug));
        level.Level = LogLevel.Error;
        Assert.False(log.IsEnabled(LogLevel.Warning));
    }

    [Theory]
    [InlineData("info", LogLevel.Information)]
    [InlineData("information", LogLevel.Information)]
    [InlineData("warn", LogLevel.Warning)]
    [InlineData("err", LogLevel.Error)]
    [InlineData("crit", LogLevel.Critical)]
    [InlineData("trace", LogLevel.Trace)]
    public void Short_level_names_are_accepted_on_the_command_line(string name, LogLevel expected)
    {
        var command = new System.CommandLine.RootCommand();
        var options = new ServeOptions(command);
        var parsed = command.Parse(["--log-level", name, "--log-format", "json"]);
        Assert.Empty(parsed.Errors);
        var settings = options.Bind(parsed);
        Assert.Equal(expected, settings.LogLevel);
        Assert.Equal(LogFormat.Json, settings.LogFormat);
    }

    [Fact]
    public void The_control_socket_sits_beside_the_group_sockets_unless_told_otherwise()
    {
        var command = new System.CommandLine.RootCommand();
        var options = new ServeOptions(command);
        Assert.Equal("/run/vv/vhost-virtio.ctl", options.Bind(command.Parse(["--socket-dir", "/run/vv"])).ControlSocket);
        Assert.Equal("/tmp/c.ctl", options.Bind(command.Parse(["--control-socket", "/tmp/c.ctl"])).ControlSocket);
        Assert.Null(options.Bind(command.Parse(["--control-socket", "none"])).ControlSocket);
        Assert.Null(options.Bind(command.Parse(["--socket-path", "/tmp/one.sock"])).ControlSocket);
        Assert.NotEmpty(command.Parse(["--log-format", "xml"]).Errors);
    }
}
