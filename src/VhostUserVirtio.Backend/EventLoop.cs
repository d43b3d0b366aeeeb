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

    /// <summary>Removes a registration (loop thread only). Safe to call for a closed descriptor.</summary>
    public void Unregister(FileDescriptor fd, ulong token)
    {
        AssertLoopThread();
        _epoll.Remove(fd);
        _handlers.Remove(token);
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
                n = _epoll.Wait(ready, polling ? 0 : -1);
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
