using Microsoft.Extensions.Logging;

namespace VhostUserVirtio.Backend;

/// <summary>
/// A data-path thread. It owns the started queues assigned to it: waits on their kick descriptors
/// and runs the device's queue processing. The control loop hands queues over and takes them back
/// through <see cref="EventLoop.Invoke{T}"/>, so the data path itself takes no locks.
/// </summary>
public sealed class Worker : IPollSource, IDisposable
{
    /// <summary>
    /// Lanes for per-worker data (counters, switch state): lane 0 for any thread that is not a worker,
    /// lane i + 1 for the worker at position i of its pool.
    /// </summary>
    public const int MaxLanes = WorkerPool.MaxWorkers + 1;

    [ThreadStatic] private static int t_lane;
    [ThreadStatic] private static Worker? t_current;

    private readonly List<DeviceQueue> _queues = new();

    /// <param name="pollWindow">
    /// How long to keep busy-polling the owned rings after the last work before sleeping on their
    /// kick descriptors; zero sleeps at once (no polling).
    /// </param>
    /// <param name="position">Where the worker sits in its pool; gives its lane (<see cref="CurrentLane"/>).</param>
    public Worker(string name, ILogger logger, TimeSpan pollWindow = default, int position = 0)
    {
        if ((uint)position >= WorkerPool.MaxWorkers)
            throw new ArgumentOutOfRangeException(nameof(position), $"at most {WorkerPool.MaxWorkers} workers");
        Polling = pollWindow > TimeSpan.Zero;
        Position = position;
        Loop = new EventLoop(name, logger, Polling ? this : null, pollWindow);
        // Before any queue is handed over: every later turn of the loop runs with the lane set.
        Loop.Post(() =>
        {
            t_lane = position + 1;
            t_current = this;
            ThreadId = Interop.ThreadAffinity.CurrentThreadId();
        });
    }

    public EventLoop Loop { get; }

    /// <summary>Position in the pool (0-based).</summary>
    public int Position { get; }

    /// <summary>This worker's lane (<see cref="CurrentLane"/> on its thread).</summary>
    public int Lane => Position + 1;

    /// <summary>The kernel's id of the worker's thread (gettid), once the thread has started; 0 before.</summary>
    public int ThreadId { get; private set; }

    /// <summary>The lane of the calling thread: its worker's position + 1, or 0 off the workers.</summary>
    public static int CurrentLane => t_lane;

    /// <summary>The worker whose thread is calling, or null.</summary>
    public static Worker? Current => t_current;

    /// <summary>Whether this worker busy-polls its rings (then rings keep driver kicks suppressed while polled).</summary>
    public bool Polling { get; }

    /// <summary>The CPU the worker is pinned to, or null when it may run anywhere.</summary>
    public int? Cpu { get; internal set; }

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
    public const int MaxWorkers = 64;

    private readonly Worker[] _workers;
    private int _next;

    public WorkerPool(int count, ILoggerFactory loggers, TimeSpan pollWindow = default)
    {
        if (count < 1 || count > MaxWorkers)
            throw new ArgumentOutOfRangeException(nameof(count), $"1..{MaxWorkers} workers");
        var logger = loggers.CreateLogger<Worker>();
        _workers = Enumerable.Range(0, count).Select(i => new Worker($"worker{i}", logger, pollWindow, i)).ToArray();
    }

    public IReadOnlyList<Worker> Workers => _workers;

    /// <summary>
    /// Pins worker i to <paramref name="cpus"/>[i mod count] (as OVS's pmd-cpu-mask places its PMD
    /// threads); each worker sets its own thread's affinity. Throws <see cref="Interop.NativeException"/>
    /// when the kernel refuses.
    /// </summary>
    public void Pin(IReadOnlyList<int> cpus)
    {
        if (cpus.Count == 0)
            throw new ArgumentException("no CPU given", nameof(cpus));
        for (int i = 0; i < _workers.Length; i++)
        {
            int cpu = cpus[i % cpus.Count];
            _workers[i].Loop.Invoke(() => Interop.ThreadAffinity.PinCurrentThread(cpu));
            _workers[i].Cpu = cpu;
        }
    }

    /// <summary>Round-robin choice of the worker for a queue that is starting (or a group's home), worker0 first.</summary>
    public Worker Next() => _workers[(int)((uint)(Interlocked.Increment(ref _next) - 1) % (uint)_workers.Length)];

    public void Dispose()
    {
        foreach (var w in _workers)
            w.Dispose();
    }
}
