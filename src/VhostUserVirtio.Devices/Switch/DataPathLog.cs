using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;

namespace VhostUserVirtio.Devices.Switch;

/// <summary>
/// Rate-limited warnings for the data path, where a guest can trigger one per frame. Same output as
/// <see cref="RateLimitedLogging.LogLimited"/>, but the limit is asked first and the arguments are
/// generic, so a suppressed warning costs no argument array and no boxing: no allocation per frame.
/// </summary>
internal static class DataPathLog
{
    public static void WarnLimited<T0, T1, T2>(this ILogger logger, LogRateLimit limit, string message, T0 arg0, T1 arg1, T2 arg2)
    {
        if (!logger.IsEnabled(LogLevel.Warning) || !limit.Allow(out long suppressed))
            return;
#pragma warning disable CA2254 // the template is the caller's constant; this only forwards it
        if (suppressed > 0)
            logger.LogWarning("({Suppressed} similar message(s) suppressed by the rate limit)", suppressed);
        logger.LogWarning(message, arg0, arg1, arg2);
#pragma warning restore CA2254
    }
}
