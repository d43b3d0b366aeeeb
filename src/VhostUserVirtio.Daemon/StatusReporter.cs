using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// Logs one status line per interval when it differs from the last one logged: per device
/// connected or not, front ends seen, and the device's own counters. Quiet while nothing happens.
/// </summary>
internal sealed class StatusReporter : IDisposable
{
    private readonly VhostUserServer _server;
    private readonly ILogger _log;
    private readonly Timer _timer;
    private readonly Lock _gate = new();
    private string _last;
    private bool _disposed;

    public StatusReporter(VhostUserServer server, ILogger log, TimeSpan interval)
    {
        _server = server;
        _log = log;
        _last = Describe(); // the state at "ready" was just logged; report changes from there
        _timer = new Timer(_ => Report(), null, interval, interval);
    }

    private string Describe() => string.Join("; ", _server.Endpoints.Select(e =>
        $"{e.Backend.Device.Name} {(e.IsConnected ? "connected" : "not connected")} connections={e.ConnectionCount} {DeviceCatalog.Describe(e.Backend.Device)}".TrimEnd()));

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
