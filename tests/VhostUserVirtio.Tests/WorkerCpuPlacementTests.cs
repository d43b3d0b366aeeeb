using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The daemon's --cpus: workers pinned as OVS's pmd-cpu-mask pins PMD threads, a bad list refused before anything starts.</summary>
[Trait("tier", "daemon")]
public sealed class WorkerCpuPlacementTests : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuvcpu-" + Guid.NewGuid().ToString("N")[..12]);

    public WorkerCpuPlacementTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Theory]
    [InlineData("1000", "does not exist or is offline")]
    [InlineData("0,1000", "does not exist or is offline")]
    [InlineData("abc", "not a CPU list")]
    [InlineData("3-1", "not a CPU list")]
    [InlineData("", "not a CPU list")]
    public void A_cpu_list_naming_cpus_that_cannot_run_the_workers_exits_2_with_a_clear_message(string cpus, string message)
    {
        using var daemon = DaemonProcess.Run(["serve", "--socket-dir", _dir, "--workers", "2", "--cpus", cpus]);
        Assert.True(daemon.ExitCode == 2, $"exit code {daemon.ExitCode}:\n{daemon.Output}");
        Assert.Contains("--cpus", daemon.Output);
        Assert.Contains(message, daemon.Output);
        Assert.DoesNotContain("ready:", daemon.Output);
        Assert.False(File.Exists(Path.Combine(_dir, "pf.sock")), "no socket may be created");
    }

    [Fact]
    public void Workers_are_pinned_to_the_listed_cpus_and_the_placement_of_queue_pairs_is_logged()
    {
        int cpu = Environment.ProcessorCount > 1 ? 1 : 0;
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "1", "--queue-pairs", "2", "--workers", "2", "--cpus", $"0,{cpu}"]);
        // Not just "ready:": the group logs "device group ready:" before the placement lines.
        daemon.WaitUntil(() => daemon.Output.Contains("worker(s)"), Deadline, "the daemon's ready line");
        foreach (var expected in new[] { "placement: worker0 (thread ", "on CPU 0, queue pair(s) 0 and the group's control work", "placement: worker1", $"on CPU {cpu}, queue pair(s) 1" })
            Assert.True(daemon.Output.Contains(expected), $"'{expected}' not logged:\n{daemon.Output}");

        // The kernel agrees: each worker thread may run only on its CPU.
        foreach (var (worker, expected) in new[] { ("worker0", 0), ("worker1", cpu) })
        {
            var line = daemon.Output.Split('\n').First(l => l.Contains($"placement: {worker} (thread "));
            var tid = int.Parse(line[(line.IndexOf("(thread ", StringComparison.Ordinal) + 8)..].Split(')')[0]);
            var status = File.ReadAllLines($"/proc/{daemon.Id}/task/{tid}/status");
            Assert.Equal(expected.ToString(), status.Single(l => l.StartsWith("Cpus_allowed_list:", StringComparison.Ordinal)).Split(':')[1].Trim());
        }
        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline));
        Assert.Equal(0, daemon.ExitCode);
    }
}
