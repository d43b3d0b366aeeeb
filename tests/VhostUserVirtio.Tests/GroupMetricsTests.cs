using System.Diagnostics.Metrics;
using VhostUserVirtio.Group.Metrics;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The group's counters as System.Diagnostics.Metrics instruments, read with a MeterListener while front ends send frames.</summary>
[Trait("tier", "unit")]
public sealed class GroupMetricsTests : IDisposable
{
    // VF1's and VF2's own MACs (untrusted VFs send only from those).
    private const string A = "02:56:56:00:00:01", B = "02:56:56:00:00:02", Bcast = "ff:ff:ff:ff:ff:ff";
    private readonly GroupBackend _backend = new(vfs: 2);
    private readonly GroupMetrics _metrics;
    private readonly MeterListener _listener = new();
    private readonly List<(string Instrument, long Value, Dictionary<string, string> Tags)> _seen = [];

    public GroupMetricsTests()
    {
        // No cache: each collection reads the group afresh, so the waits below see new counts at once.
        _metrics = new GroupMetrics(_backend.Group, maxAge: TimeSpan.Zero);
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter == _metrics.Meter) // other tests' groups may publish a meter of the same name
                listener.EnableMeasurementEvents(instrument);
        };
        _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            _seen.Add((instrument.Name, value, tags.ToArray().ToDictionary(t => t.Key, t => t.Value?.ToString() ?? ""))));
        _listener.Start();
    }

    public void Dispose()
    {
        _listener.Dispose();
        _metrics.Dispose();
        _backend.Dispose();
    }

    /// <summary>One collection: every measurement of every instrument.</summary>
    private List<(string Instrument, long Value, Dictionary<string, string> Tags)> Collect()
    {
        _seen.Clear();
        _listener.RecordObservableInstruments();
        return [.. _seen];
    }

    /// <summary>The one value of <paramref name="instrument"/> with these tags (at least), or null when none was measured.</summary>
    private long? Value(string instrument, params (string Key, string Value)[] tags)
    {
        var matches = Collect().Where(m => m.Instrument == instrument && tags.All(t => m.Tags.GetValueOrDefault(t.Key) == t.Value)).ToList();
        Assert.True(matches.Count <= 1, $"{instrument} has {matches.Count} series for these tags");
        return matches.Count == 0 ? null : matches[0].Value;
    }

    private void WaitFor(long expected, string instrument, params (string, string)[] tags) =>
        Assert.True(EchoBackend.WaitUntil(() => Value(instrument, tags) == expected),
            $"{instrument} {string.Join(",", tags)} is {Value(instrument, tags)?.ToString() ?? "absent"}, not {expected}");

    [Fact]
    public void Instruments_report_each_ports_traffic_drops_learning_and_the_switch()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(8);
        var frame = NetFrontEnd.Frame(Bcast, A, "to all");
        for (int i = 0; i < 3; i++)
        {
            vf1.Send(frame);
            Assert.Equal(frame, vf2.Receive().Frame);
        }
        vf1.Send(NetFrontEnd.Frame(A, A, "hairpin")); // to a MAC learned on the sender's own port: dropped

        WaitFor(4, "vhost_virtio.port.packets", ("port", "vf1"), ("direction", "tx"));
        WaitFor(3, "vhost_virtio.port.packets", ("port", "vf2"), ("direction", "rx"));
        WaitFor(3L * frame.Length, "vhost_virtio.port.bytes", ("port", "vf2"), ("direction", "rx"));
        WaitFor(1, "vhost_virtio.port.drops", ("port", "vf1"), ("reason", "hairpin"));
        Assert.Equal(0, Value("vhost_virtio.port.packets", ("port", "vf2"), ("direction", "tx")));
        Assert.Equal(1, Value("vhost_virtio.port.macs_learned", ("port", "vf1"), ("role", "vf")));
        Assert.Equal(0, Value("vhost_virtio.port.macs_not_learned", ("port", "vf1")));
        Assert.Equal(1, Value("vhost_virtio.port.connected", ("port", "vf2")));
        Assert.Equal(0, Value("vhost_virtio.port.connected", ("port", "pf"), ("role", "owner")));
        Assert.Equal(1, Value("vhost_virtio.port.link_up", ("port", "vf1")));
        Assert.Equal(3, Value("vhost_virtio.switch.floods"));
        Assert.Equal(1, Value("vhost_virtio.switch.mac_table.entries"));
        Assert.Equal(0, Value("vhost_virtio.switch.dropped_while_stopped"));
        Assert.Equal(2, Value("vhost_virtio.vfs"));
        Assert.Equal(0, Value("vhost_virtio.managed_devices"));
        Assert.Equal(0, Value("vhost_virtio.port.offloads", ("port", "vf2"), ("offload", "segmented")));
        Assert.Equal(0, Value("vhost_virtio.worker.stuck", ("worker", _backend.Group.DataPath.Loop.Name)));
    }

    [Fact]
    public void A_refused_vhost_user_message_is_counted_by_port_and_kind()
    {
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        Assert.Null(Value("vhost_virtio.port.rejected_messages", ("port", "vf2")));
        vf2.Session.Connection.SendRaw(99, MessageHeader.Version | MessageHeader.NeedReplyFlag, default);
        vf2.Session.Connection.ReadReply((FrontendRequest)99);
        WaitFor(1, "vhost_virtio.port.rejected_messages", ("port", "vf2"), ("role", "vf"), ("reason", "unknown_request"));
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        NetCheck.AssertSwitches(vf2, vf1); // refused and counted, nothing else changed
    }

    [Fact]
    public async Task A_stuck_worker_is_reported_and_collections_keep_the_last_counts_without_waiting_for_it()
    {
        Assert.Equal(2, Value("vhost_virtio.vfs"));
        var loop = _backend.Group.DataPath.Loop;
        loop.InvokeDeadline = TimeSpan.FromSeconds(1);
        using var gate = new ManualResetEventSlim();
        loop.Post(() => gate.Wait(TimeSpan.FromSeconds(60)));
        try
        {
            Assert.True(EchoBackend.WaitUntil(() => Value("vhost_virtio.worker.stuck", ("worker", loop.Name)) == 1, 30_000), "the stuck worker is not reported");
            // Stuck now: a collection must not wait (a long deadline would show as this test's timeout).
            loop.InvokeDeadline = TimeSpan.FromSeconds(120);
            var collection = await Task.Run(Collect).WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Contains(collection, m => m.Instrument == "vhost_virtio.vfs" && m.Value == 2);
            Assert.Contains(collection, m => m.Instrument == "vhost_virtio.port.link_up" && m.Tags["port"] == "vf1" && m.Value == 1);
        }
        finally
        {
            gate.Set();
        }
        Assert.True(EchoBackend.WaitUntil(() => Value("vhost_virtio.worker.stuck", ("worker", loop.Name)) == 0, 30_000), "still reported stuck");
    }

    [Fact]
    public void One_collection_asks_the_group_for_one_snapshot_whatever_the_number_of_instruments()
    {
        using var cached = new GroupMetrics(_backend.Group, maxAge: TimeSpan.FromMinutes(5));
        using var listener = new MeterListener();
        int instruments = 0;
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter == cached.Meter)
            {
                instruments++;
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.Start();
        listener.RecordObservableInstruments();
        listener.RecordObservableInstruments();
        Assert.True(instruments > 10, $"only {instruments} instruments");
        Assert.Equal(1, cached.Snapshots);
    }
}
