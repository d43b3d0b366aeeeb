using Microsoft.Extensions.Logging;

namespace VhostUserVirtio.Backend;

/// <summary>
/// A data-path thread. It owns the started queues assigned to it: waits on their kick descriptors
/// and runs the device's queue processing. The control loop hands queues over and takes them back
/// through <see cref="EventLoop.Invoke{T}"/>, so the data path itself takes no locks.
/// </summary>
public sealed class Worker : IDisposable
{
    public Worker(string name, ILogger logger) => Loop = new EventLoop(name, logger);

    public EventLoop Loop { get; }

    public void Dispose() => Loop.Dispose();
}

/// <summary>The workers of a process; queues are spread over them as they start.</summary>
public sealed class WorkerPool : IDisposable
{
    private readonly Worker[] _workers;
    private int _next;

    public WorkerPool(int count, ILoggerFactory loggers)
    {
        if (count < 1)
            throw new ArgumentOutOfRangeException(nameof(count), "at least one worker");
        var logger = loggers.CreateLogger<Worker>();
        _workers = Enumerable.Range(0, count).Select(i => new Worker($"worker{i}", logger)).ToArray();
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
