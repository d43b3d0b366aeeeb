using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;

namespace VhostUserVirtio.Tests.Support;

/// <summary>Counters from <c>show port stats N</c>.</summary>
public readonly record struct PortStats(
    long RxPackets, long RxMissed, long RxErrors, long RxBytes,
    long TxPackets, long TxErrors, long TxBytes,
    long RxPps, long TxPps);

/// <summary>How to start one testpmd (see <see cref="TestPmd.Start(TestPmdOptions)"/>).</summary>
public sealed record TestPmdOptions
{
    /// <summary>EAL <c>-l</c>: the main lcore plus one per forwarding core. lcore N runs on CPU N.</summary>
    public string Lcores { get; init; } = "0,1";
    public int MainLcore { get; init; }
    /// <summary><c>--vdev</c> values; build them with <see cref="TestPmd.VirtioUser"/> and <see cref="TestPmd.Vhost"/>.</summary>
    public IReadOnlyList<string> Vdevs { get; init; } = [];
    /// <summary>txonly, rxonly, io, mac, macswap, icmpecho, ...</summary>
    public string ForwardMode { get; init; } = "io";
    public int NbCores { get; init; } = 1;
    /// <summary><c>--txpkts</c> (txonly packet length), if set.</summary>
    public int? TxPacketLength { get; init; }
    /// <summary><c>--eth-peer</c> values, "PORT,MAC".</summary>
    public IReadOnlyList<string> EthPeers { get; init; } = [];
    /// <summary>Needed with small memory: testpmd's default pool size does not fit in -m 1024.</summary>
    public int TotalMbufs { get; init; } = 32768;
    public int? MbufSize { get; init; }
    /// <summary>Megabytes of (memfd-backed, --no-huge) memory.</summary>
    public int MemoryMb { get; init; } = 1024;
    public IReadOnlyList<string> ExtraEalArgs { get; init; } = [];
    public IReadOnlyList<string> ExtraAppArgs { get; init; } = [];

    public IEnumerable<string> EalArgs()
    {
        yield return "-l"; yield return Lcores;
        yield return "--main-lcore"; yield return MainLcore.ToString(CultureInfo.InvariantCulture);
        // No hugepages on the test machines: DPDK 22.11 backs this memory with a memfd that
        // virtio-user can share with the back end. It is made without MFD_ALLOW_SEALING, so our
        // back end takes it only with --allow-unsealed-memory (MemoryPolicy.AllowUnsealed).
        yield return "--no-huge"; yield return "-m"; yield return MemoryMb.ToString(CultureInfo.InvariantCulture);
        yield return "--no-pci";
        foreach (var v in Vdevs) { yield return "--vdev"; yield return v; }
        foreach (var a in ExtraEalArgs) yield return a;
    }

    public IEnumerable<string> AppArgs()
    {
        yield return "-i";
        yield return $"--nb-cores={NbCores}";
        yield return $"--total-num-mbufs={TotalMbufs}";
        if (MbufSize is { } size) yield return $"--mbuf-size={size}";
        yield return $"--forward-mode={ForwardMode}";
        if (TxPacketLength is { } len) yield return $"--txpkts={len}";
        foreach (var p in EthPeers) yield return $"--eth-peer={p}";
        foreach (var a in ExtraAppArgs) yield return a;
    }
}

/// <summary>
/// One interactive <c>dpdk-testpmd</c> driven through its stdin, with stdout and stderr captured in
/// order. Each instance gets a unique <c>--file-prefix</c>; Dispose quits it (gracefully, then by
/// force) and removes its runtime folder, so a failing test leaves nothing behind.
/// </summary>
public sealed partial class TestPmd : IDisposable
{
    private const string Prompt = "testpmd> ";
    private const int SIGTERM = 15;
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    private static int s_instances;
    private static readonly Lazy<string> s_install = new(RunInstallScript, LazyThreadSafetyMode.ExecutionAndPublication);
    private static readonly Lazy<int> s_staleSwept = new(SweepStaleRuntimeDirectories, LazyThreadSafetyMode.ExecutionAndPublication);

    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly Lock _command = new();
    private readonly Thread _reader;
    private bool _disposed;

    private TestPmd(Process process, string filePrefix)
    {
        _process = process;
        FilePrefix = filePrefix;
        _reader = new Thread(ReadOutput) { IsBackground = true, Name = "testpmd " + filePrefix };
    }

    public string FilePrefix { get; }
    public int Id => _process.Id;
    public bool HasExited => _process.HasExited;

    /// <summary>Everything testpmd printed so far.</summary>
    public string Output { get { lock (_output) return _output.ToString(); } }
    /// <summary>Length of <see cref="Output"/> now: pass it to <see cref="WaitForOutput"/> to see only what follows.</summary>
    public int OutputLength { get { lock (_output) return _output.Length; } }

    /// <summary>Where EAL keeps this instance's files (the same rule as eal_get_runtime_dir).</summary>
    public string RuntimeDirectory => Path.Combine(RuntimeRoot, FilePrefix);

    private static string RuntimeRoot => Path.Combine(
        Environment.IsPrivilegedProcess ? "/var/run"
            : Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } x ? x : "/tmp",
        "dpdk");

    /// <summary>
    /// Removes runtime folders of earlier test processes that died without cleaning up (killed
    /// runs): our prefixes carry the creating process id, so a folder whose process is gone is stale.
    /// </summary>
    private static int SweepStaleRuntimeDirectories()
    {
        var swept = 0;
        try
        {
            foreach (var dir in Directory.EnumerateDirectories(RuntimeRoot, "vuvt*"))
            {
                var m = Regex.Match(Path.GetFileName(dir), @"^vuvt(\d+)x");
                if (!m.Success || m.Groups[1].Value == Environment.ProcessId.ToString(CultureInfo.InvariantCulture)
                    || Directory.Exists("/proc/" + m.Groups[1].Value))
                    continue;
                try { Directory.Delete(dir, recursive: true); swept++; }
                catch (IOException) { }
                catch (UnauthorizedAccessException) { }
            }
        }
        catch (DirectoryNotFoundException) { }
        return swept;
    }

    // ---- installation ------------------------------------------------------------------------

    /// <summary>True when dpdk-testpmd is on PATH.</summary>
    public static bool IsInstalled => FindOnPath("dpdk-testpmd") != null;

    /// <summary>
    /// Makes sure DPDK is installed, running scripts/dpdk/install.sh at most once per test process
    /// (CI installs it in scripts/setup.sh; this covers a developer running the tests directly).
    /// </summary>
    public static void EnsureInstalled()
    {
        if (IsInstalled)
            return;
        var log = s_install.Value;
        if (!IsInstalled)
            throw new InvalidOperationException("dpdk-testpmd is still missing after scripts/dpdk/install.sh:\n" + log);
    }

    /// <summary>The folder holding VhostUserVirtio.sln, found by walking up from the test assembly.</summary>
    public static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "VhostUserVirtio.sln")))
                return dir.FullName;
        throw new InvalidOperationException("VhostUserVirtio.sln not found above " + AppContext.BaseDirectory);
    }

    private static string RunInstallScript()
    {
        var script = Path.Combine(RepositoryRoot(), "scripts", "dpdk", "install.sh");
        var info = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        info.ArgumentList.Add(script);
        using var p = Process.Start(info)!;
        p.StandardInput.Close();
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        // apt may wait for another installer's dpkg lock; be patient rather than flaky.
        if (!p.WaitForExit(TimeSpan.FromMinutes(20)))
        {
            p.Kill(entireProcessTree: true);
            return "install.sh timed out";
        }
        return $"exit {p.ExitCode}\n{stdout.Result}\n{stderr.Result}";
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    // ---- vdev strings ------------------------------------------------------------------------

    /// <summary>
    /// A virtio-user port (the driver side) on <paramref name="socket"/>; client unless <paramref name="server"/>;
    /// packed rings (packed_vq=1) with <paramref name="packed"/>.
    /// </summary>
    public static string VirtioUser(int index, string socket, string? mac = null, bool server = false, int queues = 1, bool packed = false) =>
        $"net_virtio_user{index},path={socket},queues={queues}" + (mac != null ? $",mac={mac}" : "") + (server ? ",server=1" : "") +
        (packed ? ",packed_vq=1" : "");

    /// <summary>A vhost-user port (DPDK's vhost PMD, the device side) listening on <paramref name="socket"/>.</summary>
    public static string Vhost(int index, string socket, int queues = 1) =>
        $"net_vhost{index},iface={socket},queues={queues}";

    // ---- life cycle --------------------------------------------------------------------------

    public static TestPmd Start(TestPmdOptions options, TimeSpan? timeout = null) =>
        Start(options.EalArgs(), options.AppArgs(), timeout);

    /// <summary>
    /// Starts testpmd with these EAL and application arguments (add <c>-i</c> yourself) and waits for
    /// its first prompt. A unique <c>--file-prefix</c> is added unless one is given. Throws (with
    /// testpmd's output) if it exits, never prompts, or a --vdev fails to probe.
    /// </summary>
    public static TestPmd Start(IEnumerable<string> ealArgs, IEnumerable<string> appArgs, TimeSpan? timeout = null)
    {
        EnsureInstalled();
        _ = s_staleSwept.Value;
        var eal = ealArgs.ToList();
        var i = eal.IndexOf("--file-prefix");
        string prefix;
        if (i >= 0 && i + 1 < eal.Count)
            prefix = eal[i + 1];
        else
        {
            prefix = $"vuvt{Environment.ProcessId}x{Interlocked.Increment(ref s_instances)}{Guid.NewGuid().ToString("N")[..4]}";
            eal.AddRange(["--file-prefix", prefix]);
        }

        // testpmd prints with stdio: into a pipe that is block-buffered and command output would sit
        // in the buffer. stdbuf makes it line-buffered; sh merges stderr into the same pipe so the
        // order of everything is kept. exec: the process we hold is testpmd itself.
        var info = new ProcessStartInfo("/bin/sh")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        info.ArgumentList.Add("-c");
        info.ArgumentList.Add("exec stdbuf -oL -eL dpdk-testpmd \"$@\" 2>&1");
        info.ArgumentList.Add("testpmd");
        foreach (var a in eal) info.ArgumentList.Add(a);
        info.ArgumentList.Add("--");
        foreach (var a in appArgs) info.ArgumentList.Add(a);

        var pmd = new TestPmd(new Process { StartInfo = info }, prefix);
        pmd.RemoveRuntimeDirectory(); // a leftover of a killed run with the same name
        pmd._process.Start();
        pmd._reader.Start();
        try
        {
            pmd.WaitForOutput(new Regex(Regex.Escape(Prompt)), timeout ?? DefaultTimeout);
            // testpmd carries on without a port whose vdev failed to probe (for virtio-user: no
            // back end listening); a test never wants that, so fail here with the reason.
            if (Regex.Match(pmd.Output, @"failed to initialize \S+ device|No probed ethernet devices") is { Success: true } bad)
                throw new InvalidOperationException($"testpmd {prefix}: a --vdev did not probe ({bad.Value}):\n{pmd.Tail()}");
        }
        catch
        {
            pmd.Dispose();
            throw;
        }
        return pmd;
    }

    private void ReadOutput()
    {
        var buffer = new char[4096];
        var reader = _process.StandardOutput;
        int n;
        while ((n = reader.Read(buffer, 0, buffer.Length)) > 0)
            lock (_output)
                _output.Append(buffer, 0, n);
    }

    // ---- commands ----------------------------------------------------------------------------

    /// <summary>Writes one command line to testpmd's stdin (no waiting).</summary>
    public void SendCommand(string command)
    {
        ThrowIfExited("sending '" + command + "'");
        _process.StandardInput.WriteLine(command);
        _process.StandardInput.Flush();
    }

    /// <summary>
    /// Sends a command and returns what it printed up to the next prompt. testpmd runs commands
    /// synchronously and prints the prompt last, so the text belongs to this command (plus any
    /// asynchronous event lines, which callers' regexes tolerate).
    /// </summary>
    public string RunCommand(string command, TimeSpan? timeout = null)
    {
        lock (_command)
        {
            var from = OutputLength;
            SendCommand(command);
            var m = WaitForOutput(new Regex(Regex.Escape(Prompt)), timeout ?? DefaultTimeout, from);
            lock (_output)
                return _output.ToString(from, m.Index);
        }
    }

    /// <summary>
    /// Waits until <paramref name="pattern"/> matches the output at or after <paramref name="from"/>;
    /// the match's Index is relative to <paramref name="from"/>. Throws with the output on timeout or exit.
    /// </summary>
    public Match WaitForOutput(Regex pattern, TimeSpan timeout, int from = 0)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var exited = _process.HasExited;
            if (exited)
                _reader.Join(TimeSpan.FromSeconds(5)); // the last bytes may still be in the pipe
            string text;
            lock (_output)
                text = _output.ToString(from, _output.Length - from);
            var m = pattern.Match(text);
            if (m.Success)
                return m;
            if (exited)
                throw new InvalidOperationException($"testpmd {FilePrefix} exited ({_process.ExitCode}) before /{pattern}/ appeared:\n{Tail()}");
            if (sw.Elapsed > timeout)
                throw new TimeoutException($"testpmd {FilePrefix}: no /{pattern}/ within {timeout.TotalSeconds:0} s:\n{Tail()}");
            Thread.Sleep(20);
        }
    }

    public Match WaitForOutput(string pattern, TimeSpan timeout, int from = 0) => WaitForOutput(new Regex(pattern), timeout, from);

    /// <summary>Starts forwarding.</summary>
    public void Start() => RunCommand("start");

    /// <summary>Starts forwarding after sending one burst on every port: this is what fills a loop.</summary>
    public void StartTxFirst() => RunCommand("start tx_first");

    /// <summary>Stops forwarding (testpmd prints the forward statistics and "Done.").</summary>
    public void Stop() => RunCommand("stop");

    public PortStats GetPortStats(int port)
    {
        var text = RunCommand($"show port stats {port}");
        if (!Regex.IsMatch(text, $@"NIC statistics for port {port}\b"))
            throw new InvalidOperationException($"testpmd {FilePrefix}: no statistics for port {port}:\n{text}");
        return new PortStats(
            Field(text, "RX-packets"), Field(text, "RX-missed"), Field(text, "RX-errors"), Field(text, "RX-bytes"),
            Field(text, "TX-packets"), Field(text, "TX-errors"), Field(text, "TX-bytes"),
            Field(text, "Rx-pps"), Field(text, "Tx-pps"));
    }

    private static long Field(string text, string name)
    {
        // Case-sensitive on purpose: RX-packets (counters) versus Rx-pps (rates).
        var m = Regex.Match(text, Regex.Escape(name) + @":\s*(\d+)");
        return m.Success ? long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
    }

    /// <summary>The "Link status" line of <c>show port info N</c>.</summary>
    public bool IsLinkUp(int port) =>
        Regex.IsMatch(RunCommand($"show port info {port}"), @"Link status:\s*up\b");

    public string MacAddress(int port) =>
        Regex.Match(RunCommand($"show port info {port}"), @"MAC address:\s*([0-9A-Fa-f:]{17})").Groups[1].Value;

    /// <summary>Polls until the port's link is up (a vhost port: once its front end set DRIVER_OK).</summary>
    public void WaitForLinkUp(int port, TimeSpan? timeout = null)
    {
        var limit = timeout ?? DefaultTimeout;
        var sw = Stopwatch.StartNew();
        while (!IsLinkUp(port))
        {
            if (sw.Elapsed > limit)
                throw new TimeoutException($"testpmd {FilePrefix}: port {port} link not up within {limit.TotalSeconds:0} s:\n{Tail()}");
            Thread.Sleep(250);
        }
    }

    /// <summary>Sends <c>quit</c> and closes stdin; true if testpmd exited in time.</summary>
    public bool Quit(TimeSpan? timeout = null)
    {
        if (_process.HasExited)
            return true;
        try
        {
            _process.StandardInput.WriteLine("quit");
            _process.StandardInput.Close(); // end of input also makes testpmd quit
        }
        catch (IOException) { } // already gone: the pipe is closed
        return _process.WaitForExit(timeout ?? TimeSpan.FromSeconds(20));
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        try
        {
            if (!Quit())
            {
                // SIGTERM still lets testpmd close its ports (and tell the other side); then SIGKILL.
                _ = Kill(_process.Id, SIGTERM);
                if (!_process.WaitForExit(TimeSpan.FromSeconds(5)))
                {
                    _process.Kill(entireProcessTree: true);
                    _process.WaitForExit(TimeSpan.FromSeconds(10));
                }
            }
        }
        catch (InvalidOperationException) { } // never started
        if (_reader.ThreadState != System.Threading.ThreadState.Unstarted)
            _reader.Join(TimeSpan.FromSeconds(5));
        RemoveRuntimeDirectory();
        _process.Dispose();
    }

    private void RemoveRuntimeDirectory()
    {
        try { Directory.Delete(RuntimeDirectory, recursive: true); }
        catch (DirectoryNotFoundException) { }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    private void ThrowIfExited(string what)
    {
        if (_process.HasExited)
        {
            _reader.Join(TimeSpan.FromSeconds(5));
            throw new InvalidOperationException($"testpmd {FilePrefix} exited ({_process.ExitCode}) before {what}:\n{Tail()}");
        }
    }

    /// <summary>The last few kilobytes of output, for failure messages.</summary>
    public string Tail(int chars = 6000)
    {
        lock (_output)
            return _output.Length <= chars ? _output.ToString() : "…" + _output.ToString(_output.Length - chars, chars);
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
