using System.Diagnostics.Metrics;
using VhostUserVirtio.Group.Metrics;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The text exposition the Prometheus endpoint serves, rendered in-process from a meter.</summary>
[Trait("tier", "unit")]
public sealed class PrometheusTextTests
{
    [Fact]
    public void A_groups_counters_render_with_prometheus_names_types_and_labels()
    {
        using var backend = new GroupBackend(vfs: 2);
        using var metrics = new GroupMetrics(backend.Group, maxAge: TimeSpan.Zero);
        using var text = new PrometheusText(metrics.Meter);
        using var vf1 = new NetFrontEnd(backend.Socket(1));
        using var vf2 = new NetFrontEnd(backend.Socket(2));
        NetCheck.AssertSwitches(vf1, vf2);
        NetCheck.AssertSwitches(vf1, vf2);

        const string Sent = "vhost_virtio_port_packets_total{port=\"vf1\",role=\"vf\",direction=\"tx\"} 2";
        Assert.True(EchoBackend.WaitUntil(() => text.Render().Contains(Sent + "\n")), text.Render());
        var lines = text.Render().Split('\n');
        Assert.Contains("# TYPE vhost_virtio_port_packets_total counter", lines);
        Assert.Contains("# TYPE vhost_virtio_port_bytes_total counter", lines);
        Assert.Contains("# TYPE vhost_virtio_port_link_up gauge", lines);
        Assert.Contains("# TYPE vhost_virtio_switch_mac_table_entries gauge", lines);
        Assert.Contains("vhost_virtio_port_packets_total{port=\"vf2\",role=\"vf\",direction=\"rx\"} 2", lines);
        Assert.Contains("vhost_virtio_port_connected{port=\"pf\",role=\"owner\"} 0", lines);
        Assert.Contains("vhost_virtio_switch_floods_total 2", lines);
        Assert.Contains("vhost_virtio_vfs 2", lines);
        // Every sample line is NAME{LABELS} VALUE or NAME VALUE, in the characters Prometheus allows.
        Assert.All(lines.Where(l => l.Length > 0 && !l.StartsWith('#')),
            l => Assert.Matches(@"^[a-zA-Z_][a-zA-Z0-9_]*(\{[a-zA-Z_][a-zA-Z0-9_]*=""[^""\n]*""(,[a-zA-Z_][a-zA-Z0-9_]*=""[^""\n]*"")*\})? -?[0-9.eE+]+$", l));
    }

    [Fact]
    public void Names_are_sanitized_label_values_escaped_and_only_the_given_meter_rendered()
    {
        using var meter = new Meter("VhostUserVirtio");
        using var other = new Meter("VhostUserVirtio");
        meter.CreateObservableCounter("odd-name.1st", () => new Measurement<long>(7, new KeyValuePair<string, object?>("a.b", "q\"uo\\te\nnl")),
            "By", "line one\nline two");
        meter.CreateObservableGauge("level", () => 2.5);
        other.CreateObservableCounter("not.mine", () => 1L);
        using var text = new PrometheusText(meter);

        var lines = text.Render().Split('\n');
        Assert.Contains("# HELP odd_name_1st_bytes_total line one\\nline two", lines);
        Assert.Contains("# TYPE odd_name_1st_bytes_total counter", lines);
        Assert.Contains("odd_name_1st_bytes_total{a_b=\"q\\\"uo\\\\te\\nnl\"} 7", lines);
        Assert.Contains("level 2.5", lines);
        Assert.DoesNotContain(lines, l => l.Contains("not_mine"));
    }
}
