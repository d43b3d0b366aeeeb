using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
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

/// <summary>
/// One thread waiting on epoll. Registrations and their handlers belong to the loop thread; other
/// threads reach it with <see cref="Post"/> (fire and forget) or <see cref="Invoke{T}"/> (wait for the
/// result). A handler that throws is logged and the loop goes on.
/// Rule that keeps this deadlock-free: the control loop may Invoke on a worker, never the reverse.
/// </summary>
public sealed class EventLoop : IDisposable
{
    private const ulong WakeToken = 0;

    private readonly ILogger _logger;
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
    public void Schedule(TimeSpan delay, Action action)
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

    /// <summary>Runs <paramref name="func"/> on the loop thread and waits for its result (or exception).</summary>
    public T Invoke<T>(Func<T> func)
    {
        if (IsLoopThread)
            return func();
        if (_stopping)
            throw new ObjectDisposedException(Name);
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        Post(() =>
        {
            try { done.SetResult(func()); }
            catch (Exception e) { done.SetException(e); }
        });
        return done.Task.GetAwaiter().GetResult();
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
                n = _epoll.Wait(ready, polling ? 0 : WaitTimeout());
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
                    _logger.LogError(e, "{Loop}: handler {Handler} failed", Name, handler);
                }
            }
            RunPosted();
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
            _logger.LogError(e, "{Loop}: polling failed", Name);
            return false;
        }
    }

    private void RunPosted()
    {
        while (_posted.TryDequeue(out var action))
        {
            try
            {
                action();
            }
            catch (Exception e)
            {
                _logger.LogError(e, "{Loop}: posted work failed", Name);
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
