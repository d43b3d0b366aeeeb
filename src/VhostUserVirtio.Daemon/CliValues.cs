using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// Parsers for the values the subcommands take (numbers in decimal or 0x hex within a range, MAC
/// addresses). Each reports a malformed value as a parse error naming the option or argument, so a bad
/// command line is refused before any action runs: one line on stderr, exit 2 (see Program), never an
/// exception from a half-parsed value.
/// </summary>
internal static class CliValues
{
    /// <summary>What every CLI failure exits with: a bad command line, or a request the daemon or the system refused.</summary>
    public const int Failed = 2;

    /// <summary>An integer from <paramref name="min"/> to <paramref name="max"/>, decimal or 0x hex.</summary>
    public static Func<ArgumentResult, int> Int(int min, int max)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(min);
        return r => Number(r, (ulong)min, (ulong)max) is { } n ? (int)n : 0;
    }

    /// <summary>An unsigned number from <paramref name="min"/> to <paramref name="max"/>, decimal or 0x hex.</summary>
    public static Func<ArgumentResult, ulong> ULong(ulong min, ulong max) => r => Number(r, min, max) ?? 0;

    /// <summary>A MAC address: six octets of one or two hex digits, separated by ':' or '-'.</summary>
    public static Mac Mac(ArgumentResult r)
    {
        string text = Token(r);
        if (Devices.Switch.Mac.TryParse(text, out var mac))
            return mac;
        r.AddError($"{Name(r)} '{text}' is not a MAC address (six hex octets such as 52:54:00:12:34:56)");
        return default;
    }

    /// <summary>Decimal or 0x hex; false when empty, malformed or over 2^64 - 1.</summary>
    public static bool TryParseNumber(string text, out ulong value) =>
        text.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? ulong.TryParse(text.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value)
            : ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out value);

    private static ulong? Number(ArgumentResult r, ulong min, ulong max)
    {
        string text = Token(r);
        if (TryParseNumber(text, out ulong n) && n >= min && n <= max)
            return n;
        r.AddError($"{Name(r)} '{text}' is not a number from {min} to {max} (decimal or 0x hex)");
        return null;
    }

    private static string Token(ArgumentResult r) => r.Tokens.Count == 1 ? r.Tokens[0].Value : string.Join(" ", r.Tokens.Select(t => t.Value));

    /// <summary>The option's name (--vf) or the argument's (MAC), as the user sees it in --help.</summary>
    public static string Name(ArgumentResult r) => r.Parent is OptionResult o ? o.Option.Name : r.Argument.Name;

    /// <summary>
    /// Prints each parse error as one line "vhost-virtio COMMAND: error", the last with a pointer to
    /// that command's --help, and returns the exit code for a bad command line.
    /// </summary>
    private static int ReportParseErrors(ParseResult parsed, IReadOnlyList<string> errors)
    {
        var path = new List<string>();
        for (SymbolResult? c = parsed.CommandResult; c is CommandResult command && command.Parent != null; c = c.Parent)
            path.Insert(0, command.Command.Name);
        string prefix = string.Join(" ", ["vhost-virtio", .. path]);
        for (int i = 0; i < errors.Count; i++)
            Console.Error.WriteLine($"{prefix}: {OneLine(errors[i])}{(i == errors.Count - 1 ? $" (see '{prefix} --help')" : "")}");
        return Failed;
    }

    /// <summary>Some of System.CommandLine's messages list choices on lines of their own.</summary>
    private static string OneLine(string message) => string.Join(" ", message.Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries));

    /// <summary>
    /// The parse errors, including those of the enclosing commands' arguments and options (`vf ID` in
    /// `admin vf ID link up`): System.CommandLine converts only the innermost command's values while
    /// parsing and would throw the others' errors from the action. Returns the exit code when there are
    /// errors (after printing them), null when the command line is good.
    /// </summary>
    public static int? CheckCommandLine(ParseResult parsed)
    {
        var errors = parsed.Errors.Select(e => e.Message).ToList();
        for (var c = parsed.CommandResult.Parent as CommandResult; c != null; c = c.Parent as CommandResult)
            foreach (var child in c.Children)
            {
                try
                {
                    _ = child switch
                    {
                        ArgumentResult a => a.GetValueOrDefault<object?>(),
                        OptionResult o => o.GetValueOrDefault<object?>(),
                        _ => null,
                    };
                }
                catch (InvalidOperationException e)
                {
                    errors.Add(e.Message);
                }
            }
        return errors.Count > 0 ? ReportParseErrors(parsed, errors) : null;
    }

    /// <summary>
    /// Runs a subcommand's action and prints its result; a failure the action can meet (no daemon, the
    /// socket in use, the device refusing) becomes one line "vhost-virtio COMMAND: why" and exit 2.
    /// </summary>
    public static int Run(string command, Func<string> action)
    {
        try
        {
            Console.Out.Write(action());
            return 0;
        }
        catch (Exception e) when (IsReported(e))
        {
            return Fail(command, e.Message);
        }
    }

    public static int Fail(string command, string message)
    {
        Console.Error.WriteLine($"vhost-virtio {command}: {message}");
        return Failed;
    }

    /// <summary>Failures that are the request's or the environment's, reported in a line (anything else is a bug and keeps its stack trace).</summary>
    public static bool IsReported(Exception e) =>
        e is FrontEndException or NativeException or TimeoutException or IOException or UnauthorizedAccessException;
}
