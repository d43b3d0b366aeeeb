using Microsoft.Extensions.Logging;

namespace VhostUserVirtio.Backend;

/// <summary>
/// A data-path thread. It owns the started queues assigned to it: waits on their kick descriptors
/// and runs the device's queue processing. The control loop hands queues over and takes them back
/// through <see cref="EventLoop.Invoke{T}"/>, so the data path itself takes no locks.
/// </summary>
public sealed class Worker : IPollSource, IDisposable
{
    private readonly List<DeviceQueue> _queues = new();

    /// <param name="pollWindow">
    /// How long to keep busy-polling the owned rings after the last work before sleeping on their
    /// kick descriptors; zero sleeps at once (no polling).
    /// </param>
    public Worker(string name, ILogger logger, TimeSpan pollWindow = default)
    {
        Polling = pollWindow > TimeSpan.Zero;
        Loop = new EventLoop(name, logger, Polling ? this : null, pollWindow);
    }

    public EventLoop Loop { get; }

    /// <summary>Whether this worker busy-polls its rings (then rings keep driver kicks suppressed while polled).</summary>
    public bool Polling { get; }

    internal void Add(DeviceQueue queue) => _queues.Add(queue);

    internal void Remove(DeviceQueue queue) => _queues.Remove(queue);

    bool IPollSource.Poll()
    {
        bool any = false;
        for (int i = 0; i < _queues.Count; i++)
            any |= _queues[i].PollOnce();
        return any;
    }

    bool IPollSource.PrepareToSleep()
    {
        bool any = false;
        for (int i = 0; i < _queues.Count; i++)
            any |= _queues[i].Rearm();
        return any;
    }

    public void Dispose() => Loop.Dispose();
}

/// <summary>The workers of a process; queues are spread over them as they start.</summary>
public sealed class WorkerPool : IDisposable
{
    private readonly Worker[] _workers;
    private int _next;

    public WorkerPool(int count, ILoggerFactory loggers, TimeSpan pollWindow = default)
    {
        if (count < 1)
            throw new ArgumentOutOfRangeException(nameof(count), "at least one worker");
        var logger = loggers.CreateLogger<Worker>();
        _workers = Enumerable.Range(0, count).Select(i => new Worker($"worker{i}", logger, pollWindow)).ToArray();
    }

    public IReadOnlyList<Worker> Workers => _workers;

    /// <summary>Round-robin choice of the worker for a queue that is starting.</summary>
    public Worker Next() => _workers[(int)((uint)Interlocked.Increment(ref _next) % (uint)_workers.Length)];

    public void Dispose()
    {
        foreach (var w in _workers)
            w.Dispose();
    }
}
