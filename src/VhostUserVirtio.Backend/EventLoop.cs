using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Backend;

/// <summary>Something that wants to hear when a descriptor registered with an <see cref="EventLoop"/> is ready.</summary>
public interface IReadyHandler
{
    void OnReady(EpollEvents events);
}

/// <summary>
/// Work an <see cref="EventLoop"/> polls for between events (adaptive busy polling): the loop keeps
/// polling while work keeps coming, and sleeps in epoll once nothing came for a while.
/// </summary>
public interface IPollSource
{
    /// <summary>Looks for work and does it; true if there was any.</summary>
    bool Poll();

    /// <summary>About to sleep: re-arm notifications; true if work arrived meanwhile (then the loop stays awake).</summary>
    bool PrepareToSleep();
}

/// <summary>Work a loop runs again on its next turn, after other ready descriptors had theirs (a ring whose budget ran out).</summary>
public interface IDeferredWork
{
    void RunDeferred();
}

/// <summary>A loop did not run work handed to it within its deadline: it is stuck (or gone).</summary>
public sealed class LoopStuckException(string loop, string message) : Exception(message)
{
    public string Loop { get; } = loop;
}

/// <summary>
/// One thread waiting on epoll. Registrations and their handlers belong to the loop thread; other
/// threads reach it with <see cref="Post"/> (fire and forget) or <see cref="Invoke{T}"/> (wait for the
/// result, with a deadline). A handler that throws is logged and the loop goes on.
/// Rules that keep this deadlock-free and bounded: the control loop may Invoke on a worker, never the
/// reverse; an Invoke waits at most <see cref="InvokeDeadline"/>, after which the loop is reported
/// stuck and further Invokes fail at once until it runs again. Work posted to a stuck loop stays
/// queued and still runs, in order, if it recovers: callers rely on that ordering (memory retirement).
/// </summary>
public sealed class EventLoop : IDisposable
{
    private const ulong WakeToken = 0;

    private readonly ILogger _logger;
    // Handlers run on what peers send: a failure a peer can repeat must not flood the log.
    private readonly LogRateLimit _failures = new();
    private readonly Epoll _epoll = new();
    private readonly EventFd _wake = new();
    private readonly ConcurrentQueue<Action> _posted = new();
    private readonly Dictionary<ulong, IReadyHandler> _handlers = new();
    // Delayed work (loop thread only), kept in the loop rather than on a Timer: a timer callback may
    // need a new thread-pool thread, and creating a thread needs a descriptor, which is exactly what
    // is missing when accepting fails with EMFILE; the runtime aborts when it cannot create one.
    private readonly List<(long Due, Action Action)> _scheduled = new();
    private readonly Thread _thread;
    private ulong _nextToken = 1;
    private volatile bool _stopping;
    private List<IDeferredWork> _deferred = new();
    private List<IDeferredWork> _deferredSpare = new();
    // Environment.TickCount64 when an Invoke gave up on this loop; 0 while it is responsive.
    private long _stuckSince;

    private readonly IPollSource? _pollSource;
    private readonly long _pollWindowTicks;
    private readonly long _pollSliceTicks;

    /// <param name="pollSource">Polled between events, if given, for up to <paramref name="pollWindow"/> after the last work.</param>
    public EventLoop(string name, ILogger logger, IPollSource? pollSource = null, TimeSpan pollWindow = default)
    {
        Name = name;
        _pollSource = pollSource;
        _pollWindowTicks = (long)(pollWindow.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
        _pollSliceTicks = System.Diagnostics.Stopwatch.Frequency / 20_000; // 50 µs between looks at the descriptors
        _logger = logger;
        _epoll.Add(_wake.Descriptor, EpollEvents.In, WakeToken);
        _thread = new Thread(Run) { Name = name, IsBackground = true };
        _thread.Start();
    }

    public string Name { get; }

    /// <summary>How long <see cref="Invoke{T}"/> waits for this loop before reporting it stuck.</summary>
    public TimeSpan InvokeDeadline { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Whether an Invoke gave up on this loop and it has not run anything since.</summary>
    public bool IsStuck => Volatile.Read(ref _stuckSince) != 0;

    /// <summary>Runs <paramref name="work"/> on the loop's next turn (loop thread only). Pending work keeps the loop from sleeping.</summary>
    public void Defer(IDeferredWork work)
    {
        AssertLoopThread();
        _deferred.Add(work);
    }

    public bool IsLoopThread => Thread.CurrentThread == _thread;

    /// <summary>Registers a descriptor (loop thread only); returns the token to unregister it with.</summary>
    public ulong Register(FileDescriptor fd, EpollEvents events, IReadyHandler handler)
    {
        AssertLoopThread();
        ulong token = _nextToken++;
        _epoll.Add(fd, events, token);
        _handlers[token] = handler;
        return token;
    }

    /// <summary>Changes what a registration waits for (loop thread only), e.g. writability instead of input.</summary>
    public void Modify(FileDescriptor fd, ulong token, EpollEvents events)
    {
        AssertLoopThread();
        _epoll.Modify(fd, events, token);
    }

    /// <summary>Removes a registration (loop thread only). Safe to call for a closed descriptor.</summary>
    public void Unregister(FileDescriptor fd, ulong token)
    {
        AssertLoopThread();
        _epoll.Remove(fd);
        _handlers.Remove(token);
    }

    /// <summary>Runs <paramref name="action"/> on the loop thread after <paramref name="delay"/> (loop thread only).</summary>
    public void RunAfter(TimeSpan delay, Action action)
    {
        AssertLoopThread();
        _scheduled.Add((Environment.TickCount64 + (long)Math.Ceiling(delay.TotalMilliseconds), action));
    }

    /// <summary>Milliseconds until the next scheduled action is due (0 if one is), or -1 when none is scheduled.</summary>
    private int WaitTimeout()
    {
        if (_scheduled.Count == 0)
            return -1;
        long next = long.MaxValue;
        foreach (var (due, _) in _scheduled)
            next = Math.Min(next, due);
        return (int)Math.Clamp(next - Environment.TickCount64, 0, int.MaxValue);
    }

    private void RunScheduled()
    {
        if (_scheduled.Count == 0)
            return;
        long now = Environment.TickCount64;
        for (int i = 0; i < _scheduled.Count;)
        {
            if (_scheduled[i].Due > now)
            {
                i++;
                continue;
            }
            var action = _scheduled[i].Action;
            _scheduled.RemoveAt(i);
            try
            {
                action();
            }
            catch (Exception e)
            {
                _logger.LogError(e, "{Loop}: scheduled work failed", Name);
            }
        }
    }

    /// <summary>Runs <paramref name="action"/> on the loop thread soon.</summary>
    public void Post(Action action)
    {
        _posted.Enqueue(action);
        _wake.Signal();
    }

    /// <summary>
    /// Runs <paramref name="func"/> on the loop thread and waits for its result (or exception), at most
    /// <see cref="InvokeDeadline"/>. Throws <see cref="LoopStuckException"/> when the loop does not get
    /// to it in time (the work stays queued and runs if the loop recovers), or at once while the loop is
    /// known to be stuck.
    /// </summary>
    public T Invoke<T>(Func<T> func)
    {
        if (IsLoopThread)
            return func();
        return Await(Schedule(func));
    }

    /// <summary>
    /// Hands <paramref name="func"/> to the loop and returns at once; <see cref="Await{T}"/> waits for
    /// it. Lets a caller hand work to several loops first and then wait for all of them. Throws
    /// <see cref="LoopStuckException"/> at once while the loop is known to be stuck.
    /// </summary>
    public Task<T> Schedule<T>(Func<T> func)
    {
        if (_stopping)
            throw new ObjectDisposedException(Name);
        long stuck = Volatile.Read(ref _stuckSince);
        if (stuck != 0)
            throw new LoopStuckException(Name, $"{Name} has not responded for {(Environment.TickCount64 - stuck) / 1000.0:0.#} s");
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        Post(() =>
        {
            try { done.SetResult(func()); }
            catch (Exception e) { done.SetException(e); }
        });
        return done.Task;
    }

    /// <summary>
    /// Waits for work <see cref="Schedule{T}"/> handed to this loop, at most <see cref="InvokeDeadline"/>;
    /// past it the loop is reported stuck and <see cref="LoopStuckException"/> thrown (the work stays
    /// queued and runs if the loop recovers).
    /// </summary>
    public T Await<T>(Task<T> scheduled)
    {
        if (!scheduled.IsCompleted && Volatile.Read(ref _stuckSince) is long stuck and not 0)
            throw new LoopStuckException(Name, $"{Name} has not responded for {(Environment.TickCount64 - stuck) / 1000.0:0.#} s");
        if (!scheduled.Wait(InvokeDeadline))
        {
            if (Interlocked.CompareExchange(ref _stuckSince, Environment.TickCount64, 0) == 0)
                _logger.LogCritical("{Loop} did not run work handed to it within {Deadline} s: reported stuck; callers fail instead of waiting until it runs again",
                    Name, InvokeDeadline.TotalSeconds);
            throw new LoopStuckException(Name, $"{Name} did not respond within {InvokeDeadline.TotalSeconds:0.#} s");
        }
        return scheduled.GetAwaiter().GetResult();
    }

    public void Invoke(Action action) => Invoke(() => { action(); return true; });

    private void AssertLoopThread()
    {
        if (!IsLoopThread)
            throw new InvalidOperationException($"{Name}: registrations change only on the loop thread");
    }

    private void Run()
    {
        Span<EpollReady> ready = stackalloc EpollReady[64];
        long lastWork = 0;
        while (!_stopping)
        {
            int n;
            bool polling = _pollSource != null && System.Diagnostics.Stopwatch.GetTimestamp() - lastWork < _pollWindowTicks;
            if (_pollSource != null && !polling && _pollSource.PrepareToSleep())
            {
                lastWork = System.Diagnostics.Stopwatch.GetTimestamp();
                polling = true;
            }
            try
            {
                n = _epoll.Wait(ready, polling || _deferred.Count > 0 ? 0 : WaitTimeout());
            }
            catch (Exception e)
            {
                _logger.LogCritical(e, "{Loop}: epoll_wait failed; loop stops", Name);
                break;
            }
            for (int i = 0; i < n; i++)
            {
                if (ready[i].Token == WakeToken)
                {
                    _wake.Drain();
                    continue;
                }
                // A handler earlier in this batch may have unregistered this one.
                if (!_handlers.TryGetValue(ready[i].Token, out var handler))
                    continue;
                try
                {
                    handler.OnReady(ready[i].Events);
                }
                catch (Exception e)
                {
                    _logger.LogLimited(_failures, LogLevel.Error, e, "{Loop}: handler {Handler} failed", Name, handler);
                }
            }
            RunPosted();
            RunDeferred();
            RunScheduled();
            if (_pollSource == null)
                continue;
            if (n > 0)
                lastWork = System.Diagnostics.Stopwatch.GetTimestamp();
            // Poll in a tight slice, without a syscall per round: an epoll_wait(0) per round costs
            // more than a small burst of packets, and would make the poller slowest under load.
            long sliceEnd = System.Diagnostics.Stopwatch.GetTimestamp() + _pollSliceTicks;
            do
            {
                if (SafePoll())
                    lastWork = System.Diagnostics.Stopwatch.GetTimestamp();
                if (!_posted.IsEmpty)
                    RunPosted();
                RunDeferred();
            } while (!_stopping && System.Diagnostics.Stopwatch.GetTimestamp() < sliceEnd &&
                     System.Diagnostics.Stopwatch.GetTimestamp() - lastWork < _pollWindowTicks);
        }
        RunPosted();
    }

    private bool SafePoll()
    {
        try
        {
            return _pollSource!.Poll();
        }
        catch (Exception e)
        {
            _logger.LogLimited(_failures, LogLevel.Error, e, "{Loop}: polling failed", Name);
            return false;
        }
    }

    private void RunDeferred()
    {
        if (_deferred.Count == 0)
            return;
        // Swap first: work deferred again while running lands in the other list, for the next turn.
        var batch = _deferred;
        _deferred = _deferredSpare;
        _deferredSpare = batch;
        foreach (var work in batch)
        {
            try
            {
                work.RunDeferred();
            }
            catch (Exception e)
            {
                _logger.LogLimited(_failures, LogLevel.Error, e, "{Loop}: deferred work {Work} failed", Name, work);
            }
        }
        batch.Clear();
    }

    private void RunPosted()
    {
        while (_posted.TryDequeue(out var action))
        {
            // Running posted work again is what "responsive" means: the work that made a caller give up
            // may be the very one that just finished.
            if (Volatile.Read(ref _stuckSince) is long since and not 0)
            {
                Volatile.Write(ref _stuckSince, 0);
                _logger.LogWarning("{Loop} runs again after being stuck for {Seconds:0.#} s", Name, (Environment.TickCount64 - since) / 1000.0);
            }
            try
            {
                action();
            }
            catch (Exception e)
            {
                _logger.LogLimited(_failures, LogLevel.Error, e, "{Loop}: posted work failed", Name);
            }
        }
    }

    public void Dispose()
    {
        if (_stopping)
            return;
        _stopping = true;
        _wake.Signal();
        if (!IsLoopThread)
            _thread.Join();
        _epoll.Dispose();
        _wake.Dispose();
    }
}
