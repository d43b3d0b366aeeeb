using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// The real vhost-virtio executable of this build, run as a child process with its output captured.
/// Disposing kills it if it is still running, so a failed test never leaves a daemon behind.
/// </summary>
public sealed partial class DaemonProcess : IDisposable
{
    private const int SIGTERM = 15;

    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly StringBuilder _stdout = new();

    private DaemonProcess(Process process) => _process = process;

    public int Id => _process.Id;
    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;

    /// <summary>stdout and stderr as captured so far, interleaved by arrival.</summary>
    public string Output { get { lock (_output) return _output.ToString(); } }
    /// <summary>Characters captured so far (an offset for <see cref="OutputFrom"/>).</summary>
    public int OutputLength { get { lock (_output) return _output.Length; } }

    /// <summary>What was captured from offset <paramref name="start"/> on (cheaper than <see cref="Output"/> on a long log).</summary>
    public string OutputFrom(int start) { lock (_output) return _output.ToString(start, _output.Length - start); }

    /// <summary>stdout alone (the daemon logs to stderr, so this is its real output).</summary>
    public string StandardOutput { get { lock (_output) return _stdout.ToString(); } }

    /// <summary>Path of vhost-virtio.dll, recorded at build time by the test project (see its csproj).</summary>
    public static string DaemonPath
    {
        get
        {
            var path = typeof(DaemonProcess).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
                .FirstOrDefault(a => a.Key == "VhostVirtioDaemonPath")?.Value;
            Assert.False(string.IsNullOrEmpty(path), "the test assembly does not record the daemon's path");
            Assert.True(File.Exists(path), $"daemon not built at {path}");
            return path;
        }
    }

    /// <summary>
    /// Starts <c>dotnet vhost-virtio.dll args</c>, or <c>launcher… dotnet vhost-virtio.dll args</c> when a
    /// launcher is given (e.g. <c>ip netns exec NS</c>, which execs the rest in the same process).
    /// <paramref name="environment"/> adds variables to the daemon's; <paramref name="executable"/>
    /// runs that program (an installed vhost-virtio) instead of this build's.
    /// </summary>
    public static DaemonProcess Start(IEnumerable<string> args, string? workingDirectory = null, IReadOnlyList<string>? launcher = null,
        IReadOnlyDictionary<string, string>? environment = null, string? executable = null)
    {
        // `dotnet test` tells child processes which host it runs under; fall back to PATH.
        var host = executable ?? (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : "dotnet");
        var info = new ProcessStartInfo(launcher is { Count: > 0 } ? launcher[0] : host)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true, // an empty stdin: the daemon never reads it, but fd 0 must exist
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        if (launcher is { Count: > 0 })
        {
            foreach (var word in launcher.Skip(1))
                info.ArgumentList.Add(word);
            info.ArgumentList.Add(host);
        }
        if (executable == null)
            info.ArgumentList.Add(DaemonPath);
        foreach (var a in args)
            info.ArgumentList.Add(a);
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
            info.Environment[name] = value;
        var process = new Process { StartInfo = info };
        var daemon = new DaemonProcess(process);
        process.OutputDataReceived += (_, e) => daemon.Append(e.Data, stdout: true);
        process.ErrorDataReceived += (_, e) => daemon.Append(e.Data, stdout: false);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        process.StandardInput.Close();
        return daemon;
    }

    private void Append(string? line, bool stdout)
    {
        if (line == null)
            return;
        lock (_output)
        {
            _output.AppendLine(line);
            if (stdout)
                _stdout.AppendLine(line);
        }
    }

    /// <summary>Runs the daemon to completion (for commands that exit by themselves).</summary>
    public static DaemonProcess Run(params string[] args)
    {
        var daemon = Start(args);
        Assert.True(daemon.WaitForExit(TimeSpan.FromSeconds(60)), "daemon did not exit:\n" + daemon.Output);
        return daemon;
    }

    /// <summary>Waits until <paramref name="condition"/> holds, failing early if the daemon exits.</summary>
    public void WaitUntil(Func<bool> condition, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (WaitForExit(TimeSpan.Zero))
                Assert.Fail($"daemon exited ({_process.ExitCode}) before {what}:\n{Output}");
            if (DateTime.UtcNow > deadline)
                Assert.Fail($"timed out waiting for {what}:\n{Output}");
            Thread.Sleep(20);
        }
    }

    /// <summary>Waits for exit and for the captured output to be complete.</summary>
    public bool WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit(timeout))
            return false;
        _process.WaitForExit(); // drains the asynchronous output readers
        return true;
    }

    /// <summary>Sends SIGTERM, as a service manager would (Process.Kill sends SIGKILL).</summary>
    public void Terminate() =>
        Assert.True(Kill(_process.Id, SIGTERM) == 0, $"kill(SIGTERM) failed: errno {Marshal.GetLastPInvokeError()}");

    /// <summary>Sends SIGKILL: the daemon dies at once, running nothing of its own (no reset, no write-back).</summary>
    public void KillHard() =>
        Assert.True(Kill(_process.Id, SIGKILL) == 0, $"kill(SIGKILL) failed: errno {Marshal.GetLastPInvokeError()}");

    private const int SIGKILL = 9;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    /// <summary>
    /// Sets the daemon's descriptor limit (soft RLIMIT_NOFILE; the hard limit stays, so it can be
    /// raised again) while it runs, as prlimit(1) would: descriptors already open stay, new ones must
    /// be numbered below <paramref name="limit"/>.
    /// </summary>
    public unsafe void SetDescriptorLimit(int limit)
    {
        ulong* old = stackalloc ulong[2];
        Assert.True(Prlimit(_process.Id, RLIMIT_NOFILE, null, old) == 0, $"prlimit failed: errno {Marshal.GetLastPInvokeError()}");
        ulong* rlimit = stackalloc ulong[2];
        rlimit[0] = (ulong)limit;
        rlimit[1] = old[1];
        Assert.True(Prlimit(_process.Id, RLIMIT_NOFILE, rlimit, null) == 0, $"prlimit failed: errno {Marshal.GetLastPInvokeError()}");
    }

    private const int RLIMIT_NOFILE = 7;

    [LibraryImport("libc", EntryPoint = "prlimit", SetLastError = true)]
    private static unsafe partial int Prlimit(int pid, int resource, ulong* newLimit, ulong* oldLimit);

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(10_000);
            }
        }
        catch (InvalidOperationException) { } // never started or already reaped
        _process.Dispose();
    }
}
