using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace VhostUserVirtio.Tests.Support;

/// <summary>A virtio-net NIC on a vhost-user back end, reached through a Unix socket.</summary>
/// <param name="ServerMode">QEMU listens (server=on,wait=off) and the back end connects, e.g. the daemon with --client.</param>
/// <param name="ReconnectSeconds">QEMU as client retries a lost connection every N seconds (client mode only).</param>
/// <param name="DeviceOptions">Appended to the virtio-net-pci device's options, e.g. ",csum=off,guest_tso4=off".</param>
/// <param name="Packed">The device uses packed virtqueues (virtio-net-pci packed=on).</param>
public sealed record GuestNic(string SocketPath, string Mac, bool ServerMode = false, int? ReconnectSeconds = null, string DeviceOptions = "", bool Packed = false);

/// <summary>A virtio-net NIC on one of QEMU's own back ends; <paramref name="Backend"/> is the -netdev value without id.</summary>
public sealed record QemuNic(string Backend, string Mac)
{
    /// <summary>A port on QEMU hub <paramref name="hub"/>: two NICs on one hub are wired to each other.</summary>
    public static QemuNic Hub(string mac, int hub = 0) => new($"hubport,hubid={hub}", mac);
}

/// <summary>How to keep the guest off MSI-X: QEMU 7.2 under TCG segfaults when a guest enables MSI-X on a vhost-user net device.</summary>
public enum MsixWorkaround
{
    /// <summary>vectors=0 on every virtio-net device: no MSI-X capability, legacy INTx.</summary>
    DeviceVectorsZero,
    /// <summary>pci=nomsi on the kernel line: the guest ignores MSI/MSI-X everywhere.</summary>
    KernelNoMsi,
    /// <summary>MSI-X on (crashes QEMU 7.2 with vhost-user net; fine with QEMU's own back ends).</summary>
    None,
}

public sealed record GuestOptions
{
    /// <summary>Names the guest in progress messages and failure text.</summary>
    public string Name { get; init; } = "guest";
    public IReadOnlyList<GuestNic> Nics { get; init; } = [];
    /// <summary>NICs on QEMU's own networking (no vhost-user), added after <see cref="Nics"/>.</summary>
    public IReadOnlyList<QemuNic> QemuNics { get; init; } = [];
    /// <summary>Guest RAM, also the size of the shared memfd that vhost-user back ends map.</summary>
    public string Memory { get; init; } = "512M";
    /// <summary>Room for memory hot-plug, appended to -m (e.g. "slots=2,maxmem=1G"); null for none.</summary>
    public string? MemoryHotPlug { get; init; }
    /// <summary>Shell script run by /init as /test.sh after the modules are loaded; null boots and powers off.</summary>
    public string? TestScript { get; init; }
    /// <summary>More files for the guest (absolute path to text), e.g. data a script reads.</summary>
    public IReadOnlyDictionary<string, string> Files { get; init; } = new Dictionary<string, string>();
    public string? ExtraKernelArgs { get; init; }
    /// <summary>Appended verbatim to the QEMU command line.</summary>
    public IReadOnlyList<string> ExtraQemuArgs { get; init; } = [];
    public MsixWorkaround Msix { get; init; } = MsixWorkaround.DeviceVectorsZero;
    /// <summary>Where to keep the console log (e.g. the test's temp folder); by default a temp file deleted on Dispose.</summary>
    public string? ConsoleLogPath { get; init; }
    /// <summary>Progress messages (started, booted after N s, exited); pass ITestOutputHelper.WriteLine.</summary>
    public Action<string>? Log { get; init; }
    /// <summary>Also send every console line to <see cref="Log"/>.</summary>
    public bool EchoConsole { get; init; }
    /// <summary>A QMP monitor on this Unix socket (QEMU listens, never waits); talk to it with <see cref="QmpClient"/>.</summary>
    public string? QmpSocket { get; init; }
    /// <summary>
    /// -incoming URI (e.g. unix:/path): QEMU starts paused, waiting for a migration stream, instead of
    /// booting. Its console then continues the migrated guest's, from the moment the guest resumes.
    /// </summary>
    public string? Incoming { get; init; }
    /// <summary>Append the tools archive (iperf3 and its libraries) that scripts/guest/prepare.sh builds.</summary>
    public bool Tools { get; init; }

    /// <summary>
    /// The options for the destination of a live migration of a guest started with these options:
    /// the same machine, memory, kernel line and test files (the guest's RAM and device state must fit
    /// them), NICs in the same order on other back-end sockets, listening on <paramref name="incoming"/>.
    /// </summary>
    public GuestOptions MigrationTarget(string name, IReadOnlyList<GuestNic> nics, string incoming, string? qmpSocket, string? consoleLogPath = null)
    {
        ArgumentNullException.ThrowIfNull(nics);
        if (nics.Count != Nics.Count)
            throw new ArgumentException($"the destination needs {Nics.Count} vhost-user NICs, as the source has", nameof(nics));
        for (var i = 0; i < nics.Count; i++)
        {
            if (!nics[i].Mac.Equals(Nics[i].Mac, StringComparison.OrdinalIgnoreCase))
                throw new ArgumentException($"NIC {i}: the guest keeps its MAC {Nics[i].Mac} when it migrates", nameof(nics));
        }
        return this with { Name = name, Nics = nics, Incoming = incoming, QmpSocket = qmpSocket, ConsoleLogPath = consoleLogPath };
    }
}

/// <summary>
/// A Linux guest under qemu-system-x86_64 (TCG): the cached kernel and initramfs of
/// <see cref="GuestImage"/>, plus an archive with the test script. The serial console (QEMU's
/// stdout) is captured line by line; the guest's /init prints GUEST-BOOTED, runs /test.sh, prints
/// GUEST-TEST-EXIT &lt;status&gt; and powers off, which ends QEMU. Dispose kills QEMU if it is
/// still running and deletes the temporary files.
/// </summary>
public sealed partial class QemuGuest : IDisposable
{
    public const string BootedMarker = "GUEST-BOOTED";
    public const string TestExitMarker = "GUEST-TEST-EXIT";

    private readonly GuestOptions _options;
    private readonly Process _process;
    private readonly string _tempDir;
    private readonly List<string> _lines = [];
    private readonly StreamWriter _logFile;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private TimeSpan? _bootTime;
    private bool _disposed;

    private QemuGuest(GuestOptions options, Process process, string tempDir, string logPath)
    {
        _options = options;
        _process = process;
        _tempDir = tempDir;
        LogPath = logPath;
        _logFile = new StreamWriter(logPath, append: false, new UTF8Encoding(false)) { AutoFlush = true };
    }

    public string Name => _options.Name;
    public string LogPath { get; }
    /// <summary>This guest's temporary folder (initrd, default console log); deleted by Dispose.</summary>
    public string TempDirectory => _tempDir;
    public IReadOnlyList<string> Arguments { get; private init; } = [];
    public int ProcessId => _process.Id;
    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;
    /// <summary>Time from starting QEMU to the GUEST-BOOTED line; null until it appears.</summary>
    public TimeSpan? BootTime { get { lock (_lines) return _bootTime; } }
    public TimeSpan Elapsed => _clock.Elapsed;

    /// <summary>The console so far, QEMU's stderr included, one line each.</summary>
    public IReadOnlyList<string> Lines { get { lock (_lines) return [.. _lines]; } }
    public string Output => string.Join('\n', Lines);

    public static QemuGuest Start(GuestOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var image = GuestImage.Ensure();
        var tempDir = Directory.CreateTempSubdirectory("vuv-guest-").FullName;
        try
        {
            var initrd = Path.Combine(tempDir, "initrd.img");
            WriteInitrd(image, options, initrd);
            var args = BuildArguments(options, image.Kernel, initrd);
            var info = new ProcessStartInfo("qemu-system-x86_64")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true, // closed at once: nobody types on the console
                UseShellExecute = false,
            };
            foreach (var a in args)
                info.ArgumentList.Add(a);
            var process = new Process { StartInfo = info };
            var guest = new QemuGuest(options, process, tempDir, options.ConsoleLogPath ?? Path.Combine(tempDir, "console.log"))
            {
                Arguments = args,
            };
            guest.Record("qemu-system-x86_64 " + string.Join(' ', args), console: false);
            process.OutputDataReceived += (_, e) => guest.OnLine(e.Data);
            process.ErrorDataReceived += (_, e) => guest.OnLine(e.Data);
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            process.StandardInput.Close();
            guest.Progress($"started (pid {process.Id}, {options.Nics.Count + options.QemuNics.Count} NICs), console log {guest.LogPath}");
            return guest;
        }
        catch
        {
            TryDeleteDirectory(tempDir);
            throw;
        }
    }

    /// <summary>The QEMU arguments for <paramref name="options"/>; public so tests can check them without QEMU.</summary>
    public static IReadOnlyList<string> BuildArguments(GuestOptions options, string kernel, string initrd)
    {
        var append = "console=ttyS0 panic=-1 quiet";
        if (options.Msix == MsixWorkaround.KernelNoMsi)
            append += " pci=nomsi";
        if (!string.IsNullOrWhiteSpace(options.ExtraKernelArgs))
            append += " " + options.ExtraKernelArgs;
        var args = new List<string>
        {
            "-accel", "tcg", "-machine", "q35", "-cpu", "max", "-m", options.MemoryHotPlug is { } hotPlug ? $"{options.Memory},{hotPlug}" : options.Memory,
            "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", kernel, "-initrd", initrd, "-append", append,
            // vhost-user back ends map guest RAM, so it must be a shareable memfd.
            "-object", $"memory-backend-memfd,id=mem,size={options.Memory},share=on", "-machine", "memory-backend=mem",
        };
        var vectors = options.Msix == MsixWorkaround.DeviceVectorsZero ? ",vectors=0" : "";
        // romfile= (empty): no iPXE option ROM per NIC; the guest boots from -kernel, so it is only noise and time.
        vectors += ",romfile=";
        for (var i = 0; i < options.Nics.Count; i++)
        {
            var nic = options.Nics[i];
            if (nic.ServerMode && nic.ReconnectSeconds != null)
                throw new ArgumentException($"NIC {i}: reconnect applies to QEMU as client only", nameof(options));
            var chardev = $"socket,id=c{i},path={Escape(nic.SocketPath)}";
            if (nic.ServerMode)
                chardev += ",server=on,wait=off";
            if (nic.ReconnectSeconds is int seconds)
                chardev += $",reconnect={seconds}";
            args.AddRange(["-chardev", chardev,
                "-netdev", $"vhost-user,id=n{i},chardev=c{i},queues=1",
                "-device", $"virtio-net-pci,netdev=n{i},mac={nic.Mac}{vectors}{nic.DeviceOptions}{(nic.Packed ? ",packed=on" : "")}"]);
        }
        for (var i = 0; i < options.QemuNics.Count; i++)
        {
            var nic = options.QemuNics[i];
            args.AddRange(["-netdev", $"{nic.Backend},id=q{i}", "-device", $"virtio-net-pci,netdev=q{i},mac={nic.Mac}{vectors}"]);
        }
        if (options.QmpSocket != null)
            args.AddRange(["-qmp", $"unix:{Escape(options.QmpSocket)},server=on,wait=off"]);
        if (options.Incoming != null)
            args.AddRange(["-incoming", options.Incoming]);
        args.AddRange(options.ExtraQemuArgs);
        return args;
    }

    // QEMU option values escape a comma by doubling it.
    private static string Escape(string value) => value.Replace(",", ",,", StringComparison.Ordinal);

    /// <summary>Base initramfs, zero padding to 4 bytes (where the kernel looks for the next header), then our archive.</summary>
    private static void WriteInitrd(GuestImage image, GuestOptions options, string path)
    {
        var files = new List<(string, byte[], int)>();
        if (options.TestScript != null)
            files.Add(("/test.sh", Encoding.UTF8.GetBytes(options.TestScript), 0x1ED /* 0755 */));
        foreach (var (name, text) in options.Files)
            files.Add((name, Encoding.UTF8.GetBytes(text), 0x1A4 /* 0644 */));
        using var output = File.Create(path);
        using (var input = File.OpenRead(image.Initramfs))
            input.CopyTo(output);
        if (options.Tools)
        {
            if (image.Tools == null)
                throw new InvalidOperationException("scripts/guest/prepare.sh reported no tools archive");
            while (output.Position % 4 != 0)
                output.WriteByte(0);
            using var tools = File.OpenRead(image.Tools);
            tools.CopyTo(output);
        }
        if (files.Count == 0)
            return;
        while (output.Position % 4 != 0)
            output.WriteByte(0);
        output.Write(Cpio.Create(files));
    }

    private void OnLine(string? line)
    {
        if (line == null)
            return;
        // SeaBIOS clears the screen with escape sequences; keep the log and assertion text readable.
        line = EscapeSequence().Replace(line, "");
        Record(line, console: true);
        if (_options.EchoConsole)
            Progress("| " + line);
    }

    private void Record(string line, bool console)
    {
        lock (_lines)
        {
            if (console)
            {
                _lines.Add(line);
                if (_bootTime == null && line.Contains(BootedMarker, StringComparison.Ordinal))
                    _bootTime = _clock.Elapsed;
            }
            if (!_disposed)
                _logFile.WriteLine($"[{_clock.Elapsed.TotalSeconds,8:F3}] {line}");
            Monitor.PulseAll(_lines);
        }
    }

    private void Progress(string message)
    {
        try { _options.Log?.Invoke($"[{Name} {_clock.Elapsed.TotalSeconds:F1}s] {message}"); }
        catch (InvalidOperationException) { } // ITestOutputHelper after its test has ended
    }

    /// <summary>The first console line containing <paramref name="text"/>, waiting for it; fails the test on timeout or QEMU exit.</summary>
    public string WaitForLine(string text, TimeSpan timeout) =>
        WaitFor(l => l.Contains(text, StringComparison.Ordinal), timeout, $"a line containing '{text}'");

    /// <summary>The first match of <paramref name="pattern"/> in a console line, waiting for it.</summary>
    public Match WaitForLine(Regex pattern, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        return pattern.Match(WaitFor(pattern.IsMatch, timeout, $"a line matching /{pattern}/"));
    }

    /// <summary>The first console line accepted by <paramref name="predicate"/>, or null on timeout or QEMU exit.</summary>
    public string? TryWaitForLine(Func<string, bool> predicate, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(predicate);
        var deadline = _clock.Elapsed + timeout;
        var seen = 0;
        lock (_lines)
        {
            while (true)
            {
                for (; seen < _lines.Count; seen++)
                {
                    if (predicate(_lines[seen]))
                        return _lines[seen];
                }
                var left = deadline - _clock.Elapsed;
                if (left <= TimeSpan.Zero)
                    return null;
                if (_process.HasExited)
                {
                    // Exited: let the readers deliver the last lines (outside the lock), then look once more.
                    Monitor.Exit(_lines);
                    try { _process.WaitForExit(); }
                    finally { Monitor.Enter(_lines); }
                    for (; seen < _lines.Count; seen++)
                    {
                        if (predicate(_lines[seen]))
                            return _lines[seen];
                    }
                    return null;
                }
                // Short waits: process exit does not pulse the monitor.
                Monitor.Wait(_lines, left < TimeSpan.FromMilliseconds(200) ? left : TimeSpan.FromMilliseconds(200));
            }
        }
    }

    private string WaitFor(Func<string, bool> predicate, TimeSpan timeout, string what)
    {
        var line = TryWaitForLine(predicate, timeout);
        if (line == null)
        {
            var why = _process.HasExited ? $"QEMU exited with code {_process.ExitCode}" : $"timed out after {timeout.TotalSeconds:F0} s";
            Assert.Fail($"{why} waiting for {what}. {Describe()}");
        }
        return line;
    }

    /// <summary>Waits for GUEST-BOOTED and logs how long the boot took.</summary>
    public TimeSpan WaitForBoot(TimeSpan timeout)
    {
        WaitForLine(BootedMarker, timeout);
        var boot = BootTime!.Value;
        Progress($"booted after {boot.TotalSeconds:F1} s");
        return boot;
    }

    /// <summary>Waits for the script's GUEST-TEST-EXIT line and for QEMU to power off; returns the script's exit status.</summary>
    public int WaitForTestExit(TimeSpan timeout)
    {
        var deadline = _clock.Elapsed + timeout;
        var match = WaitForLine(new Regex($@"{TestExitMarker} (\d+|none)"), timeout);
        var left = deadline - _clock.Elapsed;
        if (!WaitForExit(left > TimeSpan.FromSeconds(30) ? left : TimeSpan.FromSeconds(30)))
            Assert.Fail($"QEMU did not exit after {TestExitMarker}. {Describe()}");
        Progress($"test script exited with {match.Groups[1].Value}; QEMU exited with {_process.ExitCode}");
        return match.Groups[1].Value == "none" ? 0 : int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    /// <summary>Waits for QEMU to exit and for the captured output to be complete.</summary>
    public bool WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit(timeout))
            return false;
        _process.WaitForExit(); // drains the asynchronous readers
        return true;
    }

    /// <summary>For assertion messages: where the log is, and the console.</summary>
    public string Describe() => $"Guest '{Name}' console (log {LogPath}):\n{Output}";

    /// <summary>
    /// The console of one guest that lived in several QEMUs, one after the other (a live migration's
    /// source, then its destination): the lines of each, in order. The source's console ends when the
    /// guest stops there; the destination's starts when it resumes, so nothing is printed twice.
    /// </summary>
    public static IReadOnlyList<string> ConsoleAcross(params QemuGuest[] qemus) => [.. qemus.SelectMany(q => q.Lines)];

    /// <summary><see cref="Describe"/> for each QEMU the guest lived in.</summary>
    public static string DescribeAcross(params QemuGuest[] qemus) => string.Join("\n", qemus.Select(q => q.Describe()));

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                Progress("still running at Dispose; killing QEMU");
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(10_000);
            }
        }
        catch (InvalidOperationException) { } // never started or already reaped
        lock (_lines)
        {
            _disposed = true;
            _logFile.Dispose();
        }
        _process.Dispose();
        TryDeleteDirectory(_tempDir);
    }

    [GeneratedRegex(@"\x1b(\[[0-9;?]*[A-Za-z]|[A-Za-z])")]
    private static partial Regex EscapeSequence();

    private static void TryDeleteDirectory(string dir)
    {
        try { Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
