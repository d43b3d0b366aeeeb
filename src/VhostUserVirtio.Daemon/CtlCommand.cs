using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using VhostUserVirtio.Daemon.Control;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// `vhost-virtio ctl …`: asks a running daemon through its control socket and prints the answer as a
/// table (or the reply's JSON with --json). Exit 0 on an answer, 1 when the daemon cannot be reached
/// or refuses, 2 for bad input.
/// </summary>
internal static class CtlCommand
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    public static Command Create()
    {
        var socket = new Option<string?>("--socket")
        {
            Description = $"The daemon's control socket (default: {ControlServer.FileName} in --socket-dir).",
            HelpName = "PATH",
        };
        var socketDir = new Option<string?>("--socket-dir")
        {
            Description = "The daemon's socket folder (as given to serve; default ./sockets).",
            HelpName = "DIR",
        };
        var json = new Option<bool>("--json") { Description = "Print the daemon's JSON reply as is." };
        // Optional to the parser so that a missing command is reported here, with exit 2 like every bad input.
        var command = new Argument<string?>("COMMAND") { Description = $"One of {string.Join(", ", ControlCommands.Names)}.", Arity = ArgumentArity.ZeroOrOne };
        var level = new Argument<string?>("LEVEL")
        {
            Description = "For log-level: the new level (trace, debug, info, warn, error, critical); without it, the current one is shown.",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var ctl = new Command("ctl", "Ask a running daemon: status, ports (counters, drops, link, queues), fdb (MAC table), log-level [LEVEL], version.");
        ctl.Options.Add(socket);
        ctl.Options.Add(socketDir);
        ctl.Options.Add(json);
        ctl.Arguments.Add(command);
        ctl.Arguments.Add(level);
        ctl.SetAction(r => Run(r.GetValue(socket), r.GetValue(socketDir), r.GetValue(json), r.GetValue(command), r.GetValue(level)));
        return ctl;
    }

    private static int Run(string? socket, string? socketDir, bool json, string? command, string? level)
    {
        if (command == null)
            return BadInput($"give a command: {string.Join(", ", ControlCommands.Names)}");
        if (socket != null && socketDir != null)
            return BadInput("give --socket or --socket-dir, not both");
        if (!ControlCommands.Names.Contains(command))
            return BadInput($"unknown command '{command}'; commands: {string.Join(", ", ControlCommands.Names)}");
        if (level != null && command != "log-level")
            return BadInput($"{command} takes no argument (got '{level}')");
        if (level != null && !LogSetup.Levels.ContainsKey(level))
            return BadInput($"unknown log level '{level}'; levels: {string.Join(", ", LogSetup.Levels.Keys)}");
        string path = socket ?? Path.Combine(socketDir ?? "./sockets", ControlServer.FileName);
        object request = level == null ? new { command } : new { command, level };
        JsonDocument reply;
        try
        {
            reply = ControlClient.RequestAsync(path, request, Timeout).GetAwaiter().GetResult();
        }
        catch (ControlUnreachableException e)
        {
            Console.Error.WriteLine("vhost-virtio ctl: " + e.Message);
            return 1;
        }
        using (reply)
        {
            var root = reply.RootElement;
            bool ok = root.TryGetProperty("ok", out var okValue) && okValue.ValueKind == JsonValueKind.True;
            if (json)
                Console.Out.WriteLine(root.GetRawText());
            else if (!ok)
                Console.Error.WriteLine("vhost-virtio ctl: the daemon refused: " + (root.TryGetProperty("error", out var e) ? e.GetString() : "no reason given"));
            else
                Console.Out.Write(Render(command, root.GetProperty("result")));
            return ok ? 0 : 1;
        }
    }

    private static int BadInput(string message)
    {
        Console.Error.WriteLine("vhost-virtio ctl: " + message);
        return 2;
    }

    internal static string Render(string command, JsonElement result) => command switch
    {
        "status" => RenderStatus(result),
        "ports" => RenderPorts(result),
        "fdb" => RenderFdb(result),
        "log-level" => $"log level: {result.GetProperty("level").GetString()} (was {result.GetProperty("previous").GetString()})\n",
        _ => $"vhost-virtio {result.GetProperty("version").GetString()}\n",
    };

    private static string RenderStatus(JsonElement r)
    {
        var devices = r.GetProperty("devices");
        var names = devices.GetProperty("names").EnumerateArray().Select(n => n.GetString()).ToList();
        var text = new StringBuilder();
        text.AppendLine($"vhost-virtio {r.GetProperty("version").GetString()}, pid {r.GetProperty("pid").GetInt32()}, up {Uptime(r.GetProperty("uptimeSeconds").GetInt64())}");
        text.AppendLine($"sockets    {r.GetProperty("socketDirectory").GetString()}");
        text.AppendLine($"devices    {devices.GetProperty("connected").GetInt32()} of {devices.GetProperty("total").GetInt32()} connected" +
                        (names.Count > 0 ? $" ({string.Join(", ", names)})" : ""));
        if (r.TryGetProperty("uplink", out var uplink))
            text.AppendLine($"uplink     {uplink.GetString()}");
        foreach (var w in r.GetProperty("workers").EnumerateArray())
        {
            var pairs = w.GetProperty("queuePairs").EnumerateArray().Select(p => p.GetInt32()).ToList();
            text.AppendLine($"worker     {w.GetProperty("name").GetString()}: {(w.TryGetProperty("cpu", out var cpu) ? $"CPU {cpu.GetInt32()}" : "any CPU")}, " +
                            $"queue pair(s) {(pairs.Count == 0 ? "none" : string.Join(",", pairs))}");
        }
        text.AppendLine($"macs       {r.GetProperty("macs").GetInt32()} learned, {r.GetProperty("floods").GetInt64()} floods");
        text.AppendLine($"log level  {r.GetProperty("logLevel").GetString()}");
        return text.ToString();
    }

    private static string Uptime(long seconds) =>
        seconds >= 86400 ? $"{seconds / 86400}d {TimeSpan.FromSeconds(seconds % 86400):hh\\:mm\\:ss}" : TimeSpan.FromSeconds(seconds).ToString("hh\\:mm\\:ss", CultureInfo.InvariantCulture);

    private static string RenderPorts(JsonElement r)
    {
        var rows = new List<string[]> { new[] { "PORT", "STATE", "LINK", "MAC", "PAIRS", "RINGS", "TX PKTS", "TX BYTES", "RX PKTS", "RX BYTES", "DROPS" } };
        var notes = new List<(int Row, string Note)>();
        foreach (var p in r.GetProperty("ports").EnumerateArray())
        {
            var c = p.GetProperty("counters");
            var drops = p.GetProperty("drops").EnumerateObject().Select(d => (d.Name, Count: d.Value.GetInt64())).ToList();
            string pairs = "-", rings = "-";
            if (p.TryGetProperty("queues", out var queues))
            {
                var all = queues.EnumerateArray().ToList();
                pairs = $"{p.GetProperty("activePairs").GetInt32()}/{p.GetProperty("queuePairs").GetInt32()}";
                rings = $"{all.Count(q => q.GetProperty("started").GetBoolean())}/{all.Count}";
                foreach (var q in all.Where(q => q.TryGetProperty("fault", out _)))
                    notes.Add((rows.Count, $"ring {q.GetProperty("index").GetInt32()} broken: {q.GetProperty("fault").GetString()}"));
            }
            string state = p.GetProperty("connected").GetBoolean() ? "connected" : "idle";
            if (p.GetProperty("legacyDriven").GetBoolean())
                state += ",legacy";
            if (!p.GetProperty("trusted").GetBoolean())
                state += ",untrusted";
            if (drops.Count > 0)
                notes.Add((rows.Count, "drops: " + string.Join(", ", drops.Select(d => $"{d.Name} {d.Count}"))));
            rows.Add([
                p.GetProperty("name").GetString()!, state, p.GetProperty("link").GetString()!,
                p.TryGetProperty("mac", out var mac) ? mac.GetString()! : "-", pairs, rings,
                Count(c, "txPackets"), Count(c, "txBytes"), Count(c, "rxPackets"), Count(c, "rxBytes"),
                drops.Sum(d => d.Count).ToString(CultureInfo.InvariantCulture),
            ]);
        }
        var text = new StringBuilder(Table(rows, notes));
        text.AppendLine($"floods {r.GetProperty("floods").GetInt64()}, dropped while stopped {r.GetProperty("droppedWhileStopped").GetInt64()}");
        return text.ToString();
    }

    private static string Count(JsonElement counters, string name) => counters.GetProperty(name).GetInt64().ToString(CultureInfo.InvariantCulture);

    private static string RenderFdb(JsonElement r)
    {
        var rows = new List<string[]> { new[] { "MAC", "PORT", "AGE" } };
        foreach (var e in r.GetProperty("entries").EnumerateArray())
            rows.Add([e.GetProperty("mac").GetString()!, e.GetProperty("port").GetString()!,
                (e.GetProperty("ageMs").GetInt64() / 1000.0).ToString("0.0", CultureInfo.InvariantCulture) + " s"]);
        return Table(rows, []) + $"{r.GetProperty("count").GetInt32()} MAC(s)\n";
    }

    /// <summary>Left-aligned columns two spaces apart; each note goes indented under its row.</summary>
    private static string Table(List<string[]> rows, List<(int Row, string Note)> notes)
    {
        var widths = Enumerable.Range(0, rows[0].Length).Select(i => rows.Max(r => r[i].Length)).ToArray();
        var text = new StringBuilder();
        for (int i = 0; i < rows.Count; i++)
        {
            text.AppendLine(string.Join("  ", rows[i].Select((cell, c) => cell.PadRight(widths[c]))).TrimEnd());
            foreach (var (_, note) in notes.Where(n => n.Row == i))
                text.AppendLine("    " + note);
        }
        return text.ToString();
    }
}
