using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace VhostUserVirtio.Tests.Support;

/// <summary>Keeps every log line so a test can assert that a rejection was logged, and why.</summary>
public sealed class CapturingLoggerProvider : ILoggerProvider
{
    private readonly ConcurrentQueue<(LogLevel Level, string Category, string Text)> _lines = new();

    public IReadOnlyList<(LogLevel Level, string Category, string Text)> Lines => _lines.ToArray();

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    /// <summary>Waits until a line at Warning or above contains <paramref name="fragment"/>.</summary>
    public bool WaitForWarning(string fragment, int timeoutMs = 10_000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while (Environment.TickCount64 < deadline)
        {
            if (HasWarning(fragment))
                return true;
            Thread.Sleep(10);
        }
        return HasWarning(fragment);
    }

    public bool HasWarning(string fragment) =>
        _lines.Any(l => l.Level >= LogLevel.Warning && l.Text.Contains(fragment, StringComparison.OrdinalIgnoreCase));

    public string Dump() => string.Join("\n", _lines.Select(l => $"{l.Level}: {l.Text}"));

    public void Dispose() { }

    private sealed class Logger(CapturingLoggerProvider owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Debug;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner._lines.Enqueue((logLevel, category, formatter(state, exception) + (exception == null ? "" : " " + exception.Message)));
    }
}
