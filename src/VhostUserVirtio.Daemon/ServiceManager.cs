using Microsoft.Extensions.Logging;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// Tells a service manager (a systemd Type=notify unit) that the daemon is ready, once its sockets
/// exist and accept, and that it is stopping. Outside a service manager this does nothing. Never
/// sends MAINPID: under `keep` the keeper stays the unit's main process (the unit allows its
/// daemon child to notify with NotifyAccess=all), so a daemon that dies is the keeper's to restart.
/// A notification that cannot be sent is logged and the daemon goes on: the manager then times
/// the start out, which says more than a daemon that refused to run.
/// </summary>
internal sealed class ServiceManager
{
    private readonly ServiceNotifier? _notifier;
    private readonly ILogger _log;

    private ServiceManager(ServiceNotifier? notifier, ILogger log) => (_notifier, _log) = (notifier, log);

    public static ServiceManager FromEnvironment(ILogger log)
    {
        try
        {
            return new ServiceManager(ServiceNotifier.FromEnvironment(), log);
        }
        catch (ArgumentException e)
        {
            log.LogWarning("not notifying the service manager: {Error}", e.Message);
            return new ServiceManager(null, log);
        }
    }

    public void Ready(string status) => Send($"READY=1\nSTATUS={status}");

    public void Stopping(string status) => Send($"STOPPING=1\nSTATUS={status}");

    private void Send(string state)
    {
        if (_notifier == null)
            return;
        try
        {
            _notifier.Notify(state);
        }
        catch (IOException e)
        {
            _log.LogWarning("cannot notify the service manager at {Address}: {Error}", _notifier.Address, e.Message);
        }
    }
}
