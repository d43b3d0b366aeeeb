using System.Net;
using System.Net.Sockets;

namespace VhostUserVirtio.Tests.Support;

/// <summary>The daemon's Prometheus endpoint (--metrics-listen) as a test reads it, on loopback.</summary>
public static class MetricsScrape
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);

    /// <summary>A loopback port nobody listens on now (the kernel's pick, released at once).</summary>
    public static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    /// <summary>GET /metrics on 127.0.0.1:<paramref name="port"/>: asserts a 200 in the text format and returns the body.</summary>
    public static string Get(int port)
    {
        using var http = new HttpClient { Timeout = Deadline };
        using var response = http.GetAsync($"http://127.0.0.1:{port}/metrics").GetAwaiter().GetResult();
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.StartsWith("text/plain", response.Content.Headers.ContentType?.ToString());
        return response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
    }
}
