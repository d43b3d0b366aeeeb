using Microsoft.Extensions.Logging;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Backend.Sessions;

/// <summary>
/// This process's use of a session keeper: at start it takes back what the previous process left
/// kept (listeners, connections, session records and their descriptors) and hands each endpoint its
/// share (<see cref="ForEndpoint"/>); afterwards endpoints keep their sessions through it. What no
/// endpoint claims (a device no longer configured) is dropped by <see cref="DropUnclaimed"/>.
/// Control loop only, apart from construction.
/// </summary>
public sealed class SessionKeeper : IDisposable
{
    private readonly DescriptorKeeper _keeper;
    private readonly Dictionary<string, FileDescriptor> _left;
    private readonly ILogger _logger;
    private bool _failed;

    private SessionKeeper(DescriptorKeeper keeper, Dictionary<string, FileDescriptor> left, ILogger logger)
    {
        _keeper = keeper;
        _left = left;
        _logger = logger;
    }

    /// <summary>Connects to the keeper this process runs under and fetches what it holds; null without one.</summary>
    public static SessionKeeper? FromEnvironment(ILogger logger)
    {
        string? path = Environment.GetEnvironmentVariable(KeeperProtocol.EnvironmentVariable);
        return string.IsNullOrEmpty(path) ? null : Connect(path, logger);
    }

    /// <summary>Connects to the keeper at <paramref name="path"/> and fetches what it holds.</summary>
    public static SessionKeeper Connect(string path, ILogger logger)
    {
        var keeper = DescriptorKeeper.Connect(path);
        try
        {
            var left = keeper.Fetch();
            logger.LogInformation("session keeper at {Path}: {Count} descriptor(s) kept from the previous process", keeper.Path, left.Count);
            return new SessionKeeper(keeper, left, logger);
        }
        catch
        {
            keeper.Dispose();
            throw;
        }
    }

    /// <summary>Whether descriptors still reach the keeper (false after it failed once: sessions then end with this process).</summary>
    public bool Working => !_failed;

    /// <summary>The keeping of the endpoint serving <paramref name="socketPath"/>, with what was kept for it.</summary>
    public KeptEndpoint ForEndpoint(string socketPath)
    {
        string prefix = socketPath + "#";
        var mine = _left.Where(e => e.Key.StartsWith(prefix, StringComparison.Ordinal)).ToList();
        foreach (var (name, _) in mine)
            _left.Remove(name);
        return new KeptEndpoint(this, prefix, mine.ToDictionary(e => e.Key[prefix.Length..], e => e.Value), _logger);
    }

    internal List<Action<RestorePass>> Pending { get; } = new();

    /// <summary>
    /// Once every endpoint is up and the devices are wired: rebuilds the kept sessions and starts
    /// their rings, every device's receive rings before any transmit ring, so the frames that piled
    /// up while no process ran find every port back; then drops whatever no endpoint claimed. Call it
    /// from any thread but the control loop.
    /// </summary>
    public void StartRestoredRings()
    {
        var pending = Pending.ToList();
        Pending.Clear();
        foreach (var pass in Enum.GetValues<RestorePass>())
            foreach (var restore in pending)
                restore(pass);
        DropUnclaimed();
    }

    /// <summary>Drops whatever no endpoint claimed.</summary>
    private void DropUnclaimed()
    {
        foreach (var (name, fd) in _left)
        {
            _logger.LogInformation("session keeper: dropping {Name}, which no configured device claims", name);
            Drop(name);
            fd.Dispose();
        }
        _left.Clear();
    }

    internal void Store(string name, FileDescriptor fd) => Call(() => _keeper.Store(name, fd));

    internal void Drop(string name) => Call(() => _keeper.Drop(name));

    private void Call(Action action)
    {
        if (_failed)
            return;
        try
        {
            action();
        }
        catch (Exception e) when (e is NativeException or IOException or TimeoutException)
        {
            _failed = true;
            _logger.LogError("session keeper at {Path} failed ({Error}): sessions will not survive a restart of this process", _keeper.Path, e.Message);
        }
    }

    public void Dispose()
    {
        foreach (var fd in _left.Values)
            fd.Dispose();
        _left.Clear();
        _keeper.Dispose();
    }
}

/// <summary>The passes of rebuilding kept sessions, each over every endpoint before the next.</summary>
public enum RestorePass
{
    /// <summary>The connection taken back and the set-up replayed, rings not started.</summary>
    Session,
    /// <summary>Rings the device only fills (a net device's receive queues) started.</summary>
    FillOnlyRings,
    /// <summary>The other rings started: what piled up is processed now.</summary>
    OtherRings,
}
