using System.Diagnostics;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A thousand managed devices created and destroyed through the transport queue of a real daemon
/// leave nothing behind: its descriptors, threads, mappings and sockets, read from /proc and the
/// socket folder, are what they were. Some of them are brought up through the queue (rings started
/// in the owner's memory) before they are destroyed, so ring teardown is covered too.
/// </summary>
[Trait("tier", "daemon")]
public sealed class ManagedDeviceScaleTests(ITestOutputHelper output) : IDisposable
{
    private const int Rounds = 1000;
    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-scale-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void A_thousand_creates_and_destroys_leak_no_descriptor_thread_mapping_or_socket()
    {
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "1", "--max-vdevs", "8"]);
        string pf = Path.Combine(_dir, "pf.sock");
        daemon.WaitUntil(() => File.Exists(Path.Combine(_dir, "vf1.sock")), TimeSpan.FromSeconds(60), "the daemon's sockets");
        using var owner = OwnerDriver.Connect(pf);
        var transport = owner.Transport!;
        string[] sockets = Directory.GetFiles(_dir);

        // Warm up every path the rounds take (JIT tiers, pools), and let the daemon's 10-second status
        // timer start the runtime's thread pool, so the baseline holds what any running daemon has.
        var started = Stopwatch.StartNew();
        for (int i = 0; i < 100; i++)
            Round(owner, i % 10 == 0);
        while (started.Elapsed < TimeSpan.FromSeconds(12))
            Thread.Sleep(100);
        WaitForSockets(sockets);
        var baseline = ProcCounters.Read(daemon.Id);
        output.WriteLine($"baseline: {baseline}");

        var create = new List<double>(Rounds);
        var destroy = new List<double>(Rounds);
        for (int i = 0; i < Rounds; i++)
        {
            var (created, destroyed) = Round(owner, i % 50 == 0);
            create.Add(created);
            destroy.Add(destroyed);
        }
        Assert.Empty(transport.DevList());
        WaitForSockets(sockets);
        // Give the control loop a moment to finish the last removals before reading /proc.
        string? excess = null;
        var deadline = DateTime.UtcNow.AddSeconds(30);
        ProcCounters after;
        do
        {
            Thread.Sleep(200);
            after = ProcCounters.Read(daemon.Id);
            excess = after.ExcessOver(baseline, new ProcCounters.Slack(Fds: 4, Threads: 2, Maps: 32, VmSizeKb: 16 << 10));
        }
        while (excess != null && DateTime.UtcNow < deadline);
        output.WriteLine($"after {Rounds} rounds: {after}");
        output.WriteLine($"create: median {Median(create):0.000} ms, p99 {Percentile(create, 0.99):0.000} ms; " +
            $"destroy: median {Median(destroy):0.000} ms, p99 {Percentile(destroy, 0.99):0.000} ms (owner driver in the test process, over the queue)");
        Assert.True(excess == null, $"leaked after {Rounds} create/destroy rounds: {excess}");
        Assert.False(daemon.HasExited, "the daemon died");
        Assert.Equal(sockets.Order(), Directory.GetFiles(_dir).Order()); // no vdev socket left behind
    }

    /// <summary>One create and destroy (milliseconds each); a driven one is brought up through the queue in between.</summary>
    private static (double Create, double Destroy) Round(OwnerDriver owner, bool driven)
    {
        var transport = owner.Transport!;
        var clock = Stopwatch.StartNew();
        uint id = transport.DevCreate();
        double created = clock.Elapsed.TotalMilliseconds;
        if (driven)
        {
            // Rings in the owner's memory, MSI vectors, DRIVER_OK: teardown has rings to stop.
            using var device = ManagedNetDriver.Start(owner, id, receiveBuffers: 4, windowSize: 64 << 10);
        }
        clock.Restart();
        transport.DevDestroy(id);
        return (created, clock.Elapsed.TotalMilliseconds);
    }

    private void WaitForSockets(string[] expected)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!Directory.GetFiles(_dir).Order().SequenceEqual(expected.Order()))
        {
            Assert.True(DateTime.UtcNow < deadline, $"sockets left: {string.Join(", ", Directory.GetFiles(_dir).Except(expected))}");
            Thread.Sleep(50);
        }
    }

    private static double Median(List<double> values) => Percentile(values, 0.5);

    private static double Percentile(List<double> values, double p)
    {
        var sorted = values.Order().ToList();
        return sorted[(int)Math.Min(sorted.Count - 1, Math.Floor(p * sorted.Count))];
    }
}
