using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Tests.Support;

/// <summary>Checks shared by the hostile-input tests: the harm stays where it was done.</summary>
public static class Hostile
{
    /// <summary>
    /// Asserts queue <paramref name="queue"/> of <paramref name="victim"/> was marked broken (error fd
    /// signalled, warning logged with <paramref name="reason"/>, nothing returned on it), while the
    /// victim's other queue and the other device keep echoing. <paramref name="kind"/> is what the ring's
    /// typed fault must say; <paramref name="reason"/> is looked for in the log.
    /// </summary>
    public static void AssertOnlyThatQueueBroke(EchoBackend backend, FrontEndSession victim, int queue, RingErrorKind kind, string reason,
        FrontEndSession other, int victimDevice = 0)
    {
        Assert.True(victim.ErrorFds[queue].Wait(10_000), "the back end did not signal the ring's error descriptor");
        Assert.Equal(kind, backend.Endpoints[victimDevice].Backend.Queues[queue].Ring.Fault?.Kind);
        Assert.True(backend.Logs.WaitForWarning(reason), $"no warning containing '{reason}' was logged:\n{backend.Logs.Dump()}");
        Assert.Equal(0, victim.Queues[queue].UsedIndex);

        int healthy = queue == 0 ? 1 : 0;
        var payload = Echo.Text("other queue of the same device");
        Assert.Equal(payload, Echo.RoundTrip(victim, healthy, payload));
        payload = Echo.Text("another device entirely");
        Assert.Equal(payload, Echo.RoundTrip(other, 0, payload));
    }
}
