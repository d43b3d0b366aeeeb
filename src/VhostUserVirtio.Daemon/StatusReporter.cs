using Microsoft.Extensions.Logging;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// Logs one status line per interval when it differs from the last one logged: per device
/// connected or not and its counters. Quiet while nothing happens.
/// </summary>
internal sealed class StatusReporter : IDisposable
{
    private readonly Func<string> _describe;
    private readonly ILogger _log;
    private readonly Timer _timer;
    private readonly Lock _gate = new();
    private string _last;
    private bool _disposed;

    public StatusReporter(Func<string> describe, ILogger log, TimeSpan interval)
    {
        _describe = describe;
        _log = log;
        _last = Describe(); // the state at "ready" was just logged; report changes from there
        _timer = new Timer(_ => Report(), null, interval, interval);
    }

    private string Describe()
    {
        try
        {
            return _describe();
        }
        catch (ObjectDisposedException)
        {
            return _last; // shutting down
        }
    }

    private void Report()
    {
        lock (_gate)
        {
            if (_disposed)
                return;
            string now = Describe();
            if (now == _last)
                return;
            _last = now;
            _log.LogInformation("status: {Status}", now);
        }
    }

    public void Dispose()
    {
        lock (_gate)
            _disposed = true;
        _timer.Dispose();
    }
}
