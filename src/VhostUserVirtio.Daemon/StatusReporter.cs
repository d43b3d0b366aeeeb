using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// Logs one status line per interval when it differs from the last one logged: per device
/// connected or not and its counters. Quiet while nothing happens. A report still running when the
/// next is due (a slow or stuck data path) makes the next one skip rather than queue up behind it,
/// so a stuck worker costs one waiting thread, not one per interval.
/// </summary>
internal sealed class StatusReporter : IDisposable
{
    private readonly Func<string> _describe;
    private readonly ILogger _log;
    private readonly Timer _timer;
    private string _last;
    private int _running;
    private volatile bool _disposed;

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
        catch (LoopStuckException e)
        {
            return $"unavailable: {e.Message}";
        }
    }

    private void Report()
    {
        if (Interlocked.Exchange(ref _running, 1) == 1)
            return;
        try
        {
            if (_disposed)
                return;
            string now = Describe();
            if (now == _last)
                return;
            _last = now;
            _log.LogInformation("status: {Status}", now);
        }
        finally
        {
            Volatile.Write(ref _running, 0);
        }
    }

    public void Dispose()
    {
        _disposed = true;
        _timer.Dispose();
    }
}
