using Microsoft.Extensions.Logging;

namespace VhostUserVirtio.Backend.Diagnostics;

/// <summary>
/// Bounds how often one kind of message is logged: at most <c>burst</c> per window, the rest counted
/// and reported as one line with the next message that gets through. Everything a guest or front end
/// can trigger repeatedly (refused messages, broken rings, refused admin commands) is logged through
/// one of these, so a hostile peer cannot flood the log or stall the thread that logs. Thread-safe.
/// </summary>
public sealed class LogRateLimit
{
    private readonly Lock _gate = new();
    private readonly int _burst;
    private readonly long _windowMs;
    private long _windowStart = long.MinValue;
    private int _logged;
    private long _suppressed;

    public LogRateLimit(int burst = 10, TimeSpan? window = null)
    {
        if (burst < 1)
            throw new ArgumentOutOfRangeException(nameof(burst), "at least one message per window");
        _burst = burst;
        _windowMs = (long)(window ?? TimeSpan.FromSeconds(1)).TotalMilliseconds;
    }

    /// <summary>Occurrences dropped over the limit's lifetime (for status and tests).</summary>
    public long TotalSuppressed { get; private set; }

    /// <summary>
    /// Whether this occurrence may be logged; <paramref name="suppressed"/> is how many were dropped
    /// since the last one that was.
    /// </summary>
    public bool Allow(out long suppressed)
    {
        long now = Environment.TickCount64;
        lock (_gate)
        {
            if (now - _windowStart >= _windowMs)
            {
                _windowStart = now;
                _logged = 0;
            }
            if (_logged >= _burst)
            {
                _suppressed++;
                TotalSuppressed++;
                suppressed = 0;
                return false;
            }
            _logged++;
            suppressed = _suppressed;
            _suppressed = 0;
            return true;
        }
    }
}

public static class RateLimitedLogging
{
    /// <summary>
    /// Logs through <paramref name="limit"/>: dropped when over the limit, and preceded by a count of
    /// what was dropped since the last message that got through.
    /// </summary>
    public static void LogLimited(this ILogger logger, LogRateLimit limit, LogLevel level, string message, params object?[] args) =>
        logger.LogLimited(limit, level, null, message, args);

    /// <summary>
    /// For the data path, where a guest can trigger one per frame: the limit is asked before the
    /// arguments are boxed, so a suppressed message allocates nothing.
    /// </summary>
    public static void LogLimited<T0, T1, T2>(this ILogger logger, LogRateLimit limit, LogLevel level, string message, T0 arg0, T1 arg1, T2 arg2)
    {
        if (!logger.IsEnabled(level) || !limit.Allow(out long suppressed))
            return;
#pragma warning disable CA2254 // the template is the caller's constant; this only forwards it
        if (suppressed > 0)
            logger.Log(level, "({Suppressed} similar message(s) suppressed by the rate limit)", suppressed);
        logger.Log(level, message, arg0, arg1, arg2);
#pragma warning restore CA2254
    }

    /// <summary>As <see cref="LogLimited(ILogger, LogRateLimit, LogLevel, string, object?[])"/>, with the exception that caused it.</summary>
    public static void LogLimited(this ILogger logger, LogRateLimit limit, LogLevel level, Exception? exception, string message, params object?[] args)
    {
        if (!logger.IsEnabled(level) || !limit.Allow(out long suppressed))
            return;
#pragma warning disable CA2254 // the template is the caller's constant; this only forwards it
        if (suppressed > 0)
            logger.Log(level, "({Suppressed} similar message(s) suppressed by the rate limit)", suppressed);
        logger.Log(level, exception, message, args);
#pragma warning restore CA2254
    }
}
