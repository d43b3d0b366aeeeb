using System.Net;
using System.Net.Sockets;
using System.Text;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The daemon's Prometheus endpoint (--metrics-listen) over real HTTP on loopback: the counters of
/// real traffic, hostile clients, a bad address and a taken port.
/// </summary>
[Trait("tier", "daemon")]
public sealed class MetricsDaemonTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);

    private readonly string _dir = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "vuv-m-" + Guid.NewGuid().ToString("N")[..12])).FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private DaemonProcess StartDaemon(int port)
    {
        var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "2", "--metrics-listen", $"127.0.0.1:{port}"]);
        daemon.WaitUntil(() => daemon.Output.Contains($"metrics: http://127.0.0.1:{port}/metrics") && daemon.Output.Contains("; pid "),
            Deadline, "the metrics line and the daemon's ready line");
        return daemon;
    }

    [Fact]
    public void A_scrape_shows_the_counters_of_frames_sent_through_the_daemon()
    {
        int port = MetricsScrape.FreePort();
        using var daemon = StartDaemon(port);
        using var vf1 = new NetFrontEnd(Path.Combine(_dir, "vf1.sock"));
        using var vf2 = new NetFrontEnd(Path.Combine(_dir, "vf2.sock"));
        vf2.PostRx(8);
        var frame = NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", vf1.Mac, "counted"); // padded to 60 bytes
        for (int i = 0; i < 5; i++)
        {
            vf1.Send(frame);
            Assert.Equal(frame, vf2.Receive().Frame);
        }

        string text = "";
        daemon.WaitUntil(() => (text = MetricsScrape.Get(port)).Contains("vhost_virtio_port_packets_total{port=\"vf2\",role=\"vf\",direction=\"rx\"} 5\n"),
            Deadline, "vf2's five received frames in the scrape");
        output.WriteLine(text); // a sample scrape, for the docs and for a failure's diagnosis
        var lines = text.Split('\n');
        Assert.Contains("vhost_virtio_port_packets_total{port=\"vf1\",role=\"vf\",direction=\"tx\"} 5", lines);
        Assert.Contains("vhost_virtio_port_bytes_total{port=\"vf1\",role=\"vf\",direction=\"tx\"} 300", lines); // 5 frames of 60 bytes
        Assert.Contains("vhost_virtio_port_connected{port=\"vf1\",role=\"vf\"} 1", lines);
        Assert.Contains("vhost_virtio_port_connected{port=\"pf\",role=\"owner\"} 0", lines);
        Assert.Contains("vhost_virtio_port_macs_learned{port=\"vf1\",role=\"vf\"} 1", lines);
        Assert.Contains("vhost_virtio_switch_floods_total 5", lines);
        Assert.Contains("vhost_virtio_switch_mac_table_entries 1", lines);
        Assert.Contains("# TYPE vhost_virtio_port_drops_total counter", lines);

        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline), "daemon did not exit after SIGTERM:\n" + daemon.Output);
        Assert.True(daemon.ExitCode == 0, $"exit code {daemon.ExitCode}:\n{daemon.Output}");
    }

    [Fact]
    public void Silent_garbage_and_oversized_clients_get_nothing_or_an_error_and_scrapes_go_on()
    {
        int port = MetricsScrape.FreePort();
        using var daemon = StartDaemon(port);
        using var silent = new TcpClient();
        silent.Connect(IPAddress.Loopback, port); // connects and never sends
        Assert.Contains("400 Bad Request", Exchange(port, "\x01\x02 garbage \xff\r\n\r\n"u8.ToArray()));
        Assert.Contains("404 Not Found", Exchange(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray()));
        Assert.Contains("405 Method Not Allowed", Exchange(port, "POST /metrics HTTP/1.1\r\n\r\n"u8.ToArray()));
        Assert.Contains("431", Exchange(port, Encoding.ASCII.GetBytes("GET /metrics HTTP/1.1\r\nX: " + new string('a', 20_000))));
        using (var reset = new TcpClient())
        {
            reset.Connect(IPAddress.Loopback, port);
            reset.Client.Send("GET /metr"u8);
            reset.Client.LingerState = new LingerOption(true, 0); // closes with RST mid-request
        }
        Assert.Contains("vhost_virtio_vfs 2", MetricsScrape.Get(port));

        // A client still connected at SIGTERM does not hold the daemon up.
        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline), "daemon did not exit after SIGTERM:\n" + daemon.Output);
        Assert.True(daemon.ExitCode == 0, $"exit code {daemon.ExitCode}:\n{daemon.Output}");
    }

    /// <summary>Sends <paramref name="request"/> and returns whatever the endpoint answers before closing.</summary>
    private static string Exchange(int port, byte[] request)
    {
        using var client = new TcpClient();
        client.Connect(IPAddress.Loopback, port);
        client.ReceiveTimeout = (int)Deadline.TotalMilliseconds;
        var stream = client.GetStream();
        try
        {
            stream.Write(request);
        }
        catch (IOException)
        {
            // The endpoint may answer and close before taking all of an oversized request.
        }
        var answer = new MemoryStream();
        try
        {
            stream.CopyTo(answer);
        }
        catch (IOException)
        {
            // A reset after the answer (unread request bytes) ends the stream too.
        }
        return Encoding.ASCII.GetString(answer.ToArray());
    }

    [Theory]
    [InlineData("localhost:9464")]
    [InlineData("127.0.0.1")]
    [InlineData("127.0.0.1:0")]
    [InlineData("127.0.0.1:70000")]
    [InlineData("::1:9464")]
    [InlineData("[::1:9464")]
    public void A_bad_metrics_address_is_refused_with_one_line_and_exit_2(string address)
    {
        using var daemon = DaemonProcess.Run("serve", "--socket-dir", _dir, "--metrics-listen", address);
        Assert.True(daemon.ExitCode == 2, $"exit code {daemon.ExitCode}:\n{daemon.Output}");
        var line = Assert.Single(daemon.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"vhost-virtio: --metrics-listen {address}: ", line);
        Assert.False(File.Exists(Path.Combine(_dir, "pf.sock")));
    }

    [Fact]
    public void A_metrics_port_in_use_fails_the_start_before_any_socket_exists()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        int port = ((IPEndPoint)taken.LocalEndpoint).Port;
        using var daemon = DaemonProcess.Run("serve", "--socket-dir", _dir, "--metrics-listen", $"127.0.0.1:{port}");
        Assert.NotEqual(0, daemon.ExitCode);
        Assert.Contains($"cannot listen for metrics on 127.0.0.1:{port}: Address already in use", daemon.Output);
        Assert.DoesNotContain("ready:", daemon.Output);
        Assert.False(File.Exists(Path.Combine(_dir, "pf.sock")));
    }
}
