using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The switch's per-port learning limit and the bookkeeping behind it.</summary>
[Trait("tier", "unit")]
public sealed class MacLearningTests
{
    private sealed class Port(string name) : ISwitchPort
    {
        public string Name => name;
        public PortCounters Counters { get; } = new();
        public int Received { get; set; }

        public bool Deliver(in Frame frame, Mac destination, out DropReason reason)
        {
            Received++;
            reason = default;
            return true;
        }

        public void FlushNotifications() { }
    }

    private static Frame Eth(Mac dst, Mac src)
    {
        var f = new byte[60];
        dst.Write(f);
        src.Write(f.AsSpan(6));
        return new Frame(f);
    }

    private static Mac MacOf(int port, int n) => new(0x02_00_00_00_00_00UL + ((ulong)port << 16) + (ulong)n);

    [Fact]
    public void Learned_counts_follow_learning_moves_age_out_and_detach_and_a_full_port_learns_after_a_sweep()
    {
        var sw = new L2Switch(Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, ageing: TimeSpan.FromMilliseconds(200), maxMacsPerPort: 4);
        var a = new Port("a");
        var b = new Port("b");
        var c = new Port("c");
        sw.Attach(a); sw.Attach(b); sw.Attach(c);

        for (int i = 1; i <= 6; i++)
            sw.Forward(a, Eth(Mac.Broadcast, MacOf(1, i)));
        Assert.Equal((4, 2L), (a.Counters.LearnedMacs, a.Counters.MacsNotLearned));

        // A refused source is not known: frames to it are flooded; a learned one goes to its port only.
        (b.Received, c.Received) = (0, 0);
        sw.Forward(c, Eth(MacOf(1, 6), MacOf(3, 1)));
        Assert.Equal(1, b.Received);
        sw.Forward(c, Eth(MacOf(1, 1), MacOf(3, 1)));
        Assert.Equal(1, b.Received);

        // A MAC that moves leaves its old port's share and joins the new one's.
        sw.Forward(b, Eth(Mac.Broadcast, MacOf(1, 1)));
        Assert.Equal((3, 1), (a.Counters.LearnedMacs, b.Counters.LearnedMacs));

        // An unplugged port's entries go before the next lookup.
        sw.Detach(b);
        sw.Forward(c, Eth(MacOf(1, 1), MacOf(3, 1)));
        Assert.Equal(0, b.Counters.LearnedMacs);
        Assert.Equal(1, c.Counters.LearnedMacs);
        Assert.DoesNotContain(sw.Snapshot(), e => e.Port == "b");

        // At its limit, a port learns again once its entries aged and a sweep (at most one per interval) removed them.
        sw.Forward(a, Eth(Mac.Broadcast, MacOf(1, 7)));
        Assert.Equal(4, a.Counters.LearnedMacs);
        Thread.Sleep(300);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        int n = 100;
        while (a.Counters.LearnedMacs == 4 && DateTime.UtcNow < deadline)
        {
            sw.Forward(a, Eth(Mac.Broadcast, MacOf(1, n++)));
            Thread.Sleep(20);
        }
        Assert.Equal(1, a.Counters.LearnedMacs);
        Assert.Single(sw.Snapshot(), e => e.Port == "a");
    }

    [Fact]
    public void Sources_over_the_limit_are_counted_and_logged_without_allocating_per_frame()
    {
        var logs = new CapturingLoggerProvider();
        var sw = new L2Switch(logs.CreateLogger("switch"), maxMacsPerPort: 4);
        var a = new Port("a");
        var b = new Port("b");
        sw.Attach(a); sw.Attach(b);
        var f = new byte[60];
        Mac.Broadcast.Write(f);
        for (int i = 0; i < 100; i++) // warm-up: JIT, the first (logged) refusals
        {
            MacOf(1, i).Write(f.AsSpan(6));
            sw.Forward(a, new Frame(f));
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 100; i < 10_100; i++)
        {
            MacOf(1, i).Write(f.AsSpan(6));
            sw.Forward(a, new Frame(f));
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.True(allocated < 1024, $"{allocated} bytes allocated over 10000 refused sources");
        Assert.Equal((4, 10_096L), (a.Counters.LearnedMacs, a.Counters.MacsNotLearned));
        Assert.Equal(10_100, b.Received);
        Assert.True(logs.HasWarning("a is at its limit of 4 learned MACs"));
        Assert.True(logs.Lines.Count(l => l.Level == Microsoft.Extensions.Logging.LogLevel.Warning) <= 10, logs.Dump());
    }
}
