using System.Collections.Concurrent;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// Background threads driving traffic in a concurrency test: each body's exception is kept (a
/// cancellation is the normal end), so the test asserts on <see cref="Failures"/> after joining.
/// </summary>
public sealed class TrafficThreads
{
    private readonly ConcurrentQueue<Exception> _failures = new();

    public bool Ok => _failures.IsEmpty;
    public string Failures => string.Join("\n", _failures);

    public Thread Run(Action body)
    {
        var t = new Thread(() =>
        {
            try { body(); }
            catch (OperationCanceledException) { }
            catch (Exception e) { _failures.Enqueue(e); }
        }) { IsBackground = true };
        t.Start();
        return t;
    }
}
