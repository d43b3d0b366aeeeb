using Microsoft.Extensions.Logging;

namespace VhostUserVirtio.Fuzz;

/// <summary>
/// Loggers for the targets: every message is formatted (a bad format string or a throwing argument
/// is a bug the fuzzer should see) and then dropped, so a run prints nothing per input. The code
/// under test catches what a worker's work or a message handler throws and logs it; an exception of
/// a kind only a bug throws is kept here for the target to report (<see cref="TakeUnexpected"/>).
/// </summary>
public sealed class FormattingLoggerProvider : ILoggerProvider
{
    public static readonly ILoggerFactory Factory = LoggerFactory.Create(b => b.AddProvider(new FormattingLoggerProvider()).SetMinimumLevel(LogLevel.Trace));

    private static Exception? s_unexpected;

    /// <summary>The first bug-kind exception logged since the last call, or null.</summary>
    public static Exception? TakeUnexpected() => Interlocked.Exchange(ref s_unexpected, null);

    /// <summary>Throws when code under test logged an exception only a bug throws (on any thread).</summary>
    public static void ThrowIfUnexpected()
    {
        if (TakeUnexpected() is { } e)
            throw new FuzzInvariantException($"the code under test caught and logged {e.GetType().Name}: {e}");
    }

    private static bool IsBug(Exception e) => e is NullReferenceException or IndexOutOfRangeException or ArgumentException
        or ArithmeticException or InvalidCastException or KeyNotFoundException or NotImplementedException or FormatException
        or AccessViolationException or (InvalidOperationException and not ObjectDisposedException);

    public ILogger CreateLogger(string categoryName) => new FormattingLogger();

    public void Dispose() { }

    private sealed class FormattingLogger : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            GC.KeepAlive(formatter(state, exception));
            if (exception != null && IsBug(exception))
                Interlocked.CompareExchange(ref s_unexpected, exception, null);
        }
    }
}
