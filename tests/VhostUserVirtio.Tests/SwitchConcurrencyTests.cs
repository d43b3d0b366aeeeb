using Microsoft.Extensions.Logging.Abstractions;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The switch driven by two data-path workers at once (as a group with two workers does): learning,
/// moves and ageing keep the table and each port's learned count consistent, and counts stay exact.
/// </summary>
[Trait("tier", "unit")]
public sealed class SwitchConcurrencyTests : IDisposable
{
    private const int OwnMacs = 32;
    private const int SharedMacs = 16;
    private readonly WorkerPool _workers = new(2, NullLoggerFactory.Instance);

    public void Dispose() => _workers.Dispose();

    private static Mac MacOf(int set, int n) => new(0x02_00_00_00_00_00UL + ((ulong)set << 16) + (ulong)n);

    /// <summary>Runs <paramref name="body"/> on both workers at once and waits for both.</summary>
    private void OnBothWorkers(Action<int> body)
    {
        var started = _workers.Workers.Select((w, i) => (w, w.Loop.Schedule(() => { body(i); return true; }))).ToList();
        foreach (var (w, task) in started)
            w.Loop.Await(task);
    }

    [Fact]
    public void Two_workers_learning_and_moving_macs_at_once_keep_the_table_and_counts_consistent()
    {
        var sw = new L2Switch(NullLogger.Instance, maxMacsPerPort: 128);
        var ports = Enumerable.Range(0, 4).Select(i => new CountingPort("p" + i)).ToArray();
        var sink = new CountingPort("sink");
        foreach (var p in ports)
            sw.Attach(p);
        sw.Attach(sink);
        var sinkMac = MacOf(9, 1);
        sw.Forward(sink, new Frame(CountingPort.Ethernet(Mac.Broadcast, sinkMac)));
        Assert.Equal(1, sw.Floods);

        const int perWorker = 200_000;
        OnBothWorkers(w =>
        {
            var buffer = new byte[60];
            for (int i = 0; i < perWorker; i++)
            {
                // Own MACs wander over the ports; shared MACs are sent by both workers from different ports.
                var src = i % 3 == 0 ? MacOf(8, i / 3 % SharedMacs) : MacOf(w, i % OwnMacs);
                var port = ports[(i / OwnMacs + w) % ports.Length];
                sw.Forward(port, new Frame(CountingPort.Ethernet(sinkMac, src, buffer)));
            }
            // Final positions, known: own MACs end on the worker's port.
            for (int n = 0; n < OwnMacs; n++)
                sw.Forward(ports[w], new Frame(CountingPort.Ethernet(sinkMac, MacOf(w, n), buffer)));
        });
        for (int n = 0; n < SharedMacs; n++)
            sw.Forward(ports[2], new Frame(CountingPort.Ethernet(sinkMac, MacOf(8, n))));

        int sent = 2 * (perWorker + OwnMacs) + SharedMacs;
        Assert.Equal(1, sw.Floods); // every frame went to the learned sink, none flooded
        Assert.Equal(sent, sink.Received);
        Assert.Equal(sent, sink.Counters.RxPackets);
        Assert.Equal(60L * sent, sink.Counters.RxBytes);
        Assert.Equal(sent, ports.Sum(p => p.Counters.TxPackets));
        Assert.All(ports, p => Assert.Equal(1, p.Received)); // the sink's first broadcast only

        var table = sw.Snapshot();
        Assert.Equal(2 * OwnMacs + SharedMacs + 1, table.Count);
        foreach (var p in ports.Append(sink))
            Assert.Equal(table.Count(e => e.Port == p.Name), p.Counters.LearnedMacs);
        for (int w = 0; w < 2; w++)
            for (int n = 0; n < OwnMacs; n++)
                Assert.Equal(ports[w].Name, table.Single(e => e.Mac == MacOf(w, n)).Port);
        Assert.All(Enumerable.Range(0, SharedMacs), n => Assert.Equal("p2", table.Single(e => e.Mac == MacOf(8, n)).Port));
    }

    [Fact]
    public void Entries_age_out_while_two_workers_keep_others_fresh_and_a_frame_to_an_aged_mac_is_flooded()
    {
        var sw = new L2Switch(NullLogger.Instance, ageing: TimeSpan.FromMilliseconds(100));
        var a = new CountingPort("a");
        var b = new CountingPort("b");
        var stale = new CountingPort("stale");
        sw.Attach(a); sw.Attach(b); sw.Attach(stale);
        var staleMac = MacOf(7, 1);
        sw.Forward(stale, new Frame(CountingPort.Ethernet(Mac.Broadcast, staleMac)));

        // Both workers keep their MACs fresh, sending to each other's, for several ageing periods,
        // while sweeps run beside them (each status read sweeps the table).
        var deadline = Environment.TickCount64 + 600;
        var sweeper = new Thread(() =>
        {
            while (Environment.TickCount64 < deadline)
                sw.Snapshot();
        });
        sweeper.Start();
        OnBothWorkers(w =>
        {
            var buffer = new byte[60];
            var from = w == 0 ? a : b;
            // Each worker caches a lookup of the stale MAC early on: the cache must not outlive ageing.
            sw.Forward(from, new Frame(CountingPort.Ethernet(staleMac, MacOf(w, 0), buffer)));
            while (Environment.TickCount64 < deadline)
                for (int n = 0; n < 8; n++)
                    sw.Forward(from, new Frame(CountingPort.Ethernet(MacOf(1 - w, n), MacOf(w, n), buffer)));
        });
        sweeper.Join();

        // Every entry swept or refreshed meanwhile still counts on exactly one port.
        var during = sw.Snapshot();
        foreach (var p in new[] { a, b, stale })
            Assert.Equal(during.Count(e => e.Port == p.Name), p.Counters.LearnedMacs);

        long floods = sw.Floods;
        int staleGot = stale.Received;
        OnBothWorkers(w => sw.Forward(w == 0 ? a : b, new Frame(CountingPort.Ethernet(staleMac, MacOf(w, 0)))));
        Assert.Equal(floods + 2, sw.Floods);           // aged: flooded, not sent from a cached entry
        Assert.Equal(staleGot + 2, stale.Received);    // (the flood still reaches it)

        // Fresh again now (the workers are idle), then swept: only the stale MAC is gone.
        for (int w = 0; w < 2; w++)
            for (int n = 0; n < 8; n++)
                sw.Forward(w == 0 ? a : b, new Frame(CountingPort.Ethernet(Mac.Broadcast, MacOf(w, n))));
        var table = sw.Snapshot();
        Assert.DoesNotContain(table, e => e.Mac == staleMac);
        Assert.Equal(0, stale.Counters.LearnedMacs);
        Assert.Equal(8, table.Count(e => e.Port == "a"));
        Assert.Equal(8, table.Count(e => e.Port == "b"));
        Assert.Equal(8, a.Counters.LearnedMacs);
        Assert.Equal(8, b.Counters.LearnedMacs);
    }
}
