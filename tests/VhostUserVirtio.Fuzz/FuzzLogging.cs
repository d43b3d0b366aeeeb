using Microsoft.Extensions.Logging;

namespace VhostUserVirtio.Fuzz;

/// <summary>
/// Loggers for the targets: every message is formatted (a bad format string or a throwing argument
/// is a bug the fuzzer should see) and then dropped, so a run prints nothing per input.
/// </summary>
public sealed class FormattingLoggerProvider : ILoggerProvider
{
    public static readonly ILoggerFactory Factory = LoggerFactory.Create(b => b.AddProvider(new FormattingLoggerProvider()).SetMinimumLevel(LogLevel.Trace));

    public ILogger CreateLogger(string categoryName) => new FormattingLogger();

    public void Dispose() { }

    private sealed class FormattingLogger : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            GC.KeepAlive(formatter(state, exception));
    }
}
