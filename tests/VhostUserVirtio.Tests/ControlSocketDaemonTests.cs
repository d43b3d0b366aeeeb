using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The control socket of the real daemon, over the real socket, and the `vhost-virtio ctl` client
/// against it. Deadlines are generous: a cold `dotnet` start on a busy machine is slow.
/// </summary>
[Trait("tier", "daemon")]
public sealed class ControlSocketDaemonTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-c-" + Guid.NewGuid().ToString("N")[..12]);

    private string Ctl => Path.Combine(_dir, "vhost-virtio.ctl");

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private DaemonProcess StartDaemon(params string[] extra)
    {
        var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "2", .. extra]);
        // The daemon's own ready line, logged once the control socket listens (not the group's earlier one).
        daemon.WaitUntil(() => daemon.Output.Contains("ready: net group"), Deadline, "the ready line");
        return daemon;
    }

    private static DaemonProcess RunCtl(params string[] args) => DaemonProcess.Run(["ctl", .. args]);

    [Fact]
    public void Ctl_ports_shows_each_port_with_its_counters_link_mac_and_queues()
    {
        using var daemon = StartDaemon();
        using var vf1 = new NetFrontEnd(Path.Combine(_dir, "vf1.sock"));
        using var vf2 = new NetFrontEnd(Path.Combine(_dir, "vf2.sock"));
        NetCheck.AssertSwitches(vf1, vf2);
        NetCheck.AssertSwitches(vf2, vf1);

        using var table = RunCtl("--socket-dir", _dir, "ports");
        output.WriteLine(table.StandardOutput);
        Assert.True(table.ExitCode == 0, table.Output);
        var lines = table.StandardOutput.Split('\n');
        Assert.StartsWith("PORT", lines[0]);
        var vf1Row = lines.Single(l => l.StartsWith("vf1 ")).Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // PORT STATE LINK MAC PAIRS RINGS TX-PKTS TX-BYTES RX-PKTS RX-BYTES DROPS
        Assert.Equal(["vf1", "connected,untrusted", "up", vf1.Mac, "1/1", "2/3"], vf1Row[..6]);
        Assert.True(long.Parse(vf1Row[6]) >= 1 && long.Parse(vf1Row[8]) >= 1, string.Join(' ', vf1Row));
        Assert.Contains(lines, l => l.StartsWith("vf2 ") && l.Contains("connected"));
        Assert.Contains(lines, l => l.StartsWith("pf ") && l.Contains("idle"));

        using var json = RunCtl("--socket-dir", _dir, "--json", "ports");
        Assert.True(json.ExitCode == 0, json.Output);
        var reply = JsonDocument.Parse(json.StandardOutput).RootElement;
        Assert.True(reply.GetProperty("ok").GetBoolean());
        var port = reply.GetProperty("result").GetProperty("ports").EnumerateArray().Single(p => p.GetProperty("name").GetString() == "vf2");
        Assert.True(port.GetProperty("connected").GetBoolean());
        Assert.Equal(vf2.Mac, port.GetProperty("mac").GetString());
        Assert.True(port.GetProperty("counters").GetProperty("rxPackets").GetInt64() >= 1);

        using var fdb = RunCtl("--socket", Ctl, "fdb");
        Assert.True(fdb.ExitCode == 0, fdb.Output);
        Assert.Contains(fdb.StandardOutput.Split('\n'), l => l.StartsWith(vf1.Mac) && l.Contains("vf1"));

        using var status = RunCtl("--socket-dir", _dir, "status");
        Assert.True(status.ExitCode == 0, status.Output);
        Assert.Contains($"pid {daemon.Id}", status.StandardOutput);
        Assert.Contains("2 of 3 connected (vf1, vf2)", status.StandardOutput);

        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline), daemon.Output);
        Assert.Equal(0, daemon.ExitCode);
        Assert.False(File.Exists(Ctl), "the control socket was left behind");
    }

    [Fact]
    public void Log_level_debug_set_through_ctl_takes_effect_at_once()
    {
        using var daemon = StartDaemon();
        using (new NetFrontEnd(Path.Combine(_dir, "vf1.sock"))) { }
        Thread.Sleep(500);
        Assert.DoesNotContain(" dbug: ", daemon.Output);

        using var set = RunCtl("--socket-dir", _dir, "log-level", "debug");
        Assert.True(set.ExitCode == 0, set.Output);
        Assert.Equal("log level: debug (was information)", set.StandardOutput.Trim());
        using (new NetFrontEnd(Path.Combine(_dir, "vf1.sock"))) { }
        daemon.WaitUntil(() => daemon.Output.Contains(" dbug: "), Deadline, "a debug line");

        using var back = RunCtl("--socket-dir", _dir, "log-level", "warn");
        Assert.True(back.ExitCode == 0, back.Output);
        int mark = daemon.OutputLength;
        using (new NetFrontEnd(Path.Combine(_dir, "vf1.sock"))) { }
        Thread.Sleep(500);
        Assert.DoesNotContain(" dbug: ", daemon.OutputFrom(mark));
        Assert.DoesNotContain(" info: ", daemon.OutputFrom(mark));
    }

    [Fact]
    public void The_daemon_survives_hostile_control_clients()
    {
        using var daemon = StartDaemon();
        // Garbage, then a valid request on the same connection.
        using (var s = Connect())
        {
            s.Send(Encoding.UTF8.GetBytes("\u0000\u00ffgarbage\n{\"command\":\"version\"}\n"));
            var lines = ReadLines(s, 2);
            Assert.Contains("\"ok\":false", lines[0]);
            Assert.Contains("\"ok\":true", lines[1]);
        }
        // A line over 64 KiB: an error, then the daemon closes the connection.
        using (var s = Connect())
        {
            try { s.Send(new byte[100 * 1024].Select(_ => (byte)'x').ToArray()); } catch (SocketException) { }
            var lines = ReadLines(s, 1);
            Assert.Contains("longer than 65536 bytes", lines[0]);
        }
        // Half a request, then gone; and a full set of idle clients that never send or read.
        using (var s = Connect())
            s.Send(Encoding.UTF8.GetBytes("{\"command\":\"st"));
        // Each idle client is admitted before the next connects (one answered request each): the
        // daemon frees the slots of the clients above as it notices them gone, which can take a moment.
        var idle = new List<Socket>();
        var until = DateTime.UtcNow + Deadline;
        while (idle.Count < 16 && DateTime.UtcNow < until)
        {
            var s = Connect();
            s.Send(Encoding.UTF8.GetBytes("{\"command\":\"version\"}\n"));
            if (ReadLines(s, 1) is [var reply] && reply.Contains("\"ok\":true"))
                idle.Add(s);
            else
            {
                s.Dispose();
                Thread.Sleep(100);
            }
        }
        try
        {
            Assert.Equal(16, idle.Count);
            using var refused = Connect();
            Assert.Contains("too many control clients", ReadLines(refused, 1)[0]);
        }
        finally
        {
            idle.ForEach(s => s.Dispose());
        }
        // The daemon still answers, and still forwards.
        daemon.WaitUntil(() =>
        {
            using var ctl = RunCtl("--socket-dir", _dir, "version");
            return ctl.ExitCode == 0;
        }, Deadline, "ctl version to answer again");
        using var vf1 = new NetFrontEnd(Path.Combine(_dir, "vf1.sock"));
        using var vf2 = new NetFrontEnd(Path.Combine(_dir, "vf2.sock"));
        NetCheck.AssertSwitches(vf1, vf2);
    }

    [Fact]
    public void Ctl_says_in_one_line_when_the_daemon_is_not_there_and_exits_2_on_bad_input()
    {
        Directory.CreateDirectory(_dir);
        using var missing = RunCtl("--socket-dir", _dir, "status");
        Assert.Equal(1, missing.ExitCode);
        var line = Assert.Single(missing.Output.Trim().Split('\n'));
        Assert.Contains("cannot reach the daemon", line);

        using var bogus = RunCtl("--socket-dir", _dir, "reboot");
        Assert.Equal(2, bogus.ExitCode);
        Assert.Contains("unknown command 'reboot'", bogus.Output);
        using var level = RunCtl("--socket-dir", _dir, "log-level", "loud");
        Assert.Equal(2, level.ExitCode);
        using var both = RunCtl("--socket-dir", _dir, "--socket", Ctl, "status");
        Assert.Equal(2, both.ExitCode);
        using var none = RunCtl("--socket-dir", _dir);
        Assert.Equal(2, none.ExitCode);
        Assert.Contains("give a command", none.Output);
    }

    [Fact]
    public void Mac_base_numbers_the_owner_and_its_vfs_from_the_given_mac()
    {
        using var daemon = StartDaemon("--mac-base", "02:56:56:00:01:00");
        using var json = RunCtl("--socket-dir", _dir, "--json", "ports");
        Assert.True(json.ExitCode == 0, json.Output);
        using var doc = System.Text.Json.JsonDocument.Parse(json.StandardOutput);
        var macs = doc.RootElement.GetProperty("result").GetProperty("ports").EnumerateArray()
            .ToDictionary(p => p.GetProperty("name").GetString()!, p => p.GetProperty("mac").GetString());
        Assert.Equal("02:56:56:00:01:00", macs["pf"]);
        Assert.Equal("02:56:56:00:01:01", macs["vf1"]);
        Assert.Equal("02:56:56:00:01:02", macs["vf2"]);
    }

    [Fact]
    public void Json_log_format_writes_one_json_object_per_line()
    {
        using var daemon = StartDaemon("--log-format", "json", "--control-socket", Path.Combine(_dir, "other.ctl"));
        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline), daemon.Output);
        var lines = daemon.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(lines, l => l.Contains("\"ready:"));
        Assert.All(lines, l => Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(l).RootElement.ValueKind));
    }

    private Socket Connect()
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { ReceiveTimeout = (int)Deadline.TotalMilliseconds };
        s.Connect(new UnixDomainSocketEndPoint(Ctl));
        return s;
    }

    private static List<string> ReadLines(Socket s, int count)
    {
        var text = new StringBuilder();
        var buffer = new byte[4096];
        while (text.ToString().Count(c => c == '\n') < count)
        {
            int n = s.Receive(buffer);
            if (n == 0)
                break;
            text.Append(Encoding.UTF8.GetString(buffer, 0, n));
        }
        return text.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).ToList();
    }
}
