using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;

namespace VhostUserVirtio.Daemon;

/// <summary>How log lines are written: plain text, one JSON object per line, or systemd's journal prefixes.</summary>
internal enum LogFormat { Text, Json, Systemd }

/// <summary>
/// The lowest level logged, changeable while the daemon runs (the control socket's log-level). The
/// logger factory asks it on every IsEnabled, so a change takes effect at the next line.
/// </summary>
internal sealed class LogLevelSwitch(LogLevel level)
{
    private volatile int _level = (int)level;

    public LogLevel Level
    {
        get => (LogLevel)_level;
        set => _level = (int)value;
    }
}

/// <summary>The daemon's console logging: level names, formats and the factory.</summary>
internal static class LogSetup
{
    /// <summary>Level names the command line and the control socket accept (the short forms as syslog and OVS spell them).</summary>
    public static readonly IReadOnlyDictionary<string, LogLevel> Levels = new Dictionary<string, LogLevel>(StringComparer.OrdinalIgnoreCase)
    {
        ["trace"] = LogLevel.Trace,
        ["debug"] = LogLevel.Debug,
        ["information"] = LogLevel.Information,
        ["info"] = LogLevel.Information,
        ["warning"] = LogLevel.Warning,
        ["warn"] = LogLevel.Warning,
        ["error"] = LogLevel.Error,
        ["err"] = LogLevel.Error,
        ["critical"] = LogLevel.Critical,
        ["crit"] = LogLevel.Critical,
    };

    public static readonly IReadOnlyDictionary<string, LogFormat> Formats = new Dictionary<string, LogFormat>
    {
        ["text"] = LogFormat.Text,
        ["json"] = LogFormat.Json,
        ["systemd"] = LogFormat.Systemd,
    };

    /// <summary>The name a level is reported under (the long form the command line accepts).</summary>
    public static string Name(LogLevel level) => level switch
    {
        LogLevel.Information => "information",
        LogLevel.Warning => "warning",
        _ => level.ToString().ToLowerInvariant(),
    };

    private const string Timestamp = "yyyy-MM-dd HH:mm:ss.fff ";

    public static ILoggerFactory CreateLoggers(LogLevelSwitch level, LogFormat format) =>
        LoggerFactory.Create(b =>
        {
            b.SetMinimumLevel(LogLevel.Trace)
                .AddFilter((_, _, l) => l >= level.Level && l != LogLevel.None)
                .AddConsole(o =>
                {
                    o.LogToStandardErrorThreshold = LogLevel.Trace; // all logs on stderr; stdout is for output
                    // A full log queue drops lines instead of blocking the thread that logs (the control
                    // loop, a worker): a slow reader of stderr must not stall the daemon.
                    o.QueueFullMode = ConsoleLoggerQueueFullMode.DropWrite;
                });
            switch (format)
            {
                case LogFormat.Json:
                    b.AddJsonConsole(o =>
                    {
                        o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffzzz";
                        o.JsonWriterOptions = new System.Text.Json.JsonWriterOptions
                        {
                            Indented = false,
                            // Lines go to a log, not into HTML: keep "+", quotes and non-ASCII readable.
                            Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
                        };
                    });
                    break;
                case LogFormat.Systemd:
                    // journald stamps each line itself; the formatter adds the <N> priority prefix.
                    b.AddSystemdConsole();
                    break;
                default:
                    b.AddSimpleConsole(o =>
                    {
                        o.SingleLine = true;
                        o.TimestampFormat = Timestamp;
                        o.ColorBehavior = LoggerColorBehavior.Disabled;
                    });
                    break;
            }
        });
}
