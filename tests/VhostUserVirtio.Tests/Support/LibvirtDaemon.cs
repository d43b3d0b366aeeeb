using System.Diagnostics;
using System.Text;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// A libvirt daemon for a test, reached with virsh. Where systemd is not PID 1 (containers, CI) no
/// libvirtd runs, so this starts one: privileged (QEMU then runs as libvirt-qemu, as on a real host),
/// with its client socket in the test's folder, its logs there too, and in a network namespace of its
/// own so libvirt's network driver cannot touch the host's interfaces. virtlogd is started too when
/// none runs. Where a libvirtd already serves qemu:///system (systemd, or a system one) that one is
/// used and left running. Dispose destroys the domains started through it and stops what it started.
/// </summary>
public sealed class LibvirtDaemon : IDisposable
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);
    private const string SystemSocket = "/run/libvirt/libvirt-sock";

    private readonly string _dir;
    private readonly Action<string> _log;
    private readonly List<string> _domains = [];
    private int? _libvirtdPid, _virtlogdPid;

    private LibvirtDaemon(string dir, Action<string> log)
    {
        _dir = dir;
        _log = log;
    }

    /// <summary>The connection URI virsh uses.</summary>
    public string Uri { get; private set; } = "qemu:///system";
    /// <summary>libvirtd's log when this started it (null otherwise).</summary>
    public string? LogPath { get; private set; }

    /// <summary>libvirt and QEMU versions as virsh reports them.</summary>
    public string Version => Virsh("version").Output.Trim();

    public static LibvirtDaemon Start(string dir, Action<string> log)
    {
        if (!File.Exists("/usr/sbin/libvirtd") || !File.Exists("/usr/bin/virsh"))
            Assert.Fail("libvirt is not installed: apt-get install libvirt-daemon-system libvirt-clients (scripts/setup.sh installs the test prerequisites)");
        var daemon = new LibvirtDaemon(dir, log);
        try
        {
            daemon.StartOrUseSystem();
            return daemon;
        }
        catch
        {
            daemon.Dispose();
            throw;
        }
    }

    private void StartOrUseSystem()
    {
        if (Run("virsh", ["-c", Uri, "version"], TimeSpan.FromSeconds(20)).Exit == 0)
        {
            _log($"libvirt: using the running system libvirtd ({Uri})");
            return;
        }
        if (!Answers("/run/libvirt/virtlogd-sock"))
        {
            string pidFile = Path.Combine(_dir, "virtlogd.pid");
            var r = Run("virtlogd", ["-d", "-p", pidFile], StartTimeout);
            Assert.True(r.Exit == 0, $"virtlogd did not start: {r.Output}");
            _virtlogdPid = ReadPid(pidFile);
        }
        string run = Path.Combine(_dir, "libvirt-run");
        Directory.CreateDirectory(run);
        LogPath = Path.Combine(_dir, "libvirtd.log");
        string config = Path.Combine(_dir, "libvirtd.conf");
        File.WriteAllText(config, $"unix_sock_dir = \"{run}\"\nlog_outputs = \"3:file:{LogPath}\"\n");
        string libvirtdPid = Path.Combine(_dir, "libvirtd.pid");
        // -d: libvirtd forks and returns once its sockets exist; its pid is in the pid file.
        var started = Run("unshare", ["--net", "--", "/usr/sbin/libvirtd", "-d", "-f", config, "-p", libvirtdPid], StartTimeout);
        Assert.True(started.Exit == 0, $"libvirtd did not start: {started.Output}");
        _libvirtdPid = ReadPid(libvirtdPid);
        Uri = $"qemu:///system?socket={run}/libvirt-sock";
        var deadline = Stopwatch.StartNew();
        (int Exit, string Output) probe;
        while ((probe = Virsh("version")).Exit != 0)
        {
            if (deadline.Elapsed > StartTimeout)
                Assert.Fail($"libvirtd (pid {_libvirtdPid}) does not answer on {Uri}: {probe.Output}\n{Tail(LogPath)}");
            Thread.Sleep(200);
        }
        _log($"libvirt: started libvirtd pid {_libvirtdPid} on {Uri} after {deadline.Elapsed.TotalSeconds:F1} s");
    }

    private static bool Answers(string socket)
    {
        try
        {
            using var probe = Interop.UnixSocket.Connect(socket);
            return true;
        }
        catch (IOException)
        {
            return false; // missing, or left behind by a daemon that is gone
        }
    }

    private static int ReadPid(string pidFile)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < StartTimeout)
        {
            if (File.Exists(pidFile) && int.TryParse(File.ReadAllText(pidFile).Trim(), out int pid))
                return pid;
            Thread.Sleep(100);
        }
        Assert.Fail($"no pid in {pidFile}");
        return 0;
    }

    /// <summary>Runs virsh against this daemon; <paramref name="timeout"/> bounds it (virsh start waits for a server-mode socket's peer).</summary>
    public (int Exit, string Output) Virsh(string command, IEnumerable<string>? args = null, TimeSpan? timeout = null) =>
        Run("virsh", ["-c", Uri, command, .. args ?? []], timeout ?? TimeSpan.FromSeconds(60));

    /// <summary>Creates and starts a transient domain from <paramref name="xmlPath"/>; it is destroyed on Dispose if still running.</summary>
    public void CreateDomain(string name, string xmlPath, TimeSpan timeout)
    {
        lock (_domains)
            _domains.Add(name);
        var r = Virsh("create", [xmlPath], timeout);
        Assert.True(r.Exit == 0, $"virsh create {name} failed ({r.Exit}): {r.Output}\n{(LogPath != null ? Tail(LogPath) : "")}\n{QemuLog(name)}");
    }

    /// <summary>QEMU's log for a domain, as libvirt keeps it.</summary>
    public static string QemuLog(string name)
    {
        string path = $"/var/log/libvirt/qemu/{name}.log";
        return File.Exists(path) ? $"{path}:\n{Tail(path)}" : "";
    }

    /// <summary>Destroys a running domain (a transient one is gone after that); quiet if it already ended.</summary>
    public void Destroy(string name) => Virsh("destroy", [name], TimeSpan.FromSeconds(60));

    public void Dispose()
    {
        string[] domains;
        lock (_domains)
            domains = [.. _domains];
        foreach (var name in domains)
        {
            try
            {
                Destroy(name);
                Virsh("undefine", [name], TimeSpan.FromSeconds(30)); // only if something defined it persistently
            }
            catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception)
            {
                _log($"libvirt: could not destroy {name}: {e.Message}");
            }
        }
        Stop(_libvirtdPid, "libvirtd");
        Stop(_virtlogdPid, "virtlogd");
    }

    private void Stop(int? pid, string what)
    {
        if (pid is not { } p)
            return;
        try
        {
            using var process = Process.GetProcessById(p);
            Run("kill", ["-TERM", p.ToString(System.Globalization.CultureInfo.InvariantCulture)], TimeSpan.FromSeconds(10));
            if (!process.WaitForExit(TimeSpan.FromSeconds(30)))
            {
                _log($"libvirt: {what} (pid {p}) ignored SIGTERM; killing it");
                process.Kill();
                process.WaitForExit(TimeSpan.FromSeconds(10));
            }
        }
        catch (ArgumentException) { } // already gone
        catch (InvalidOperationException) { }
    }

    private static string Tail(string path, int lines = 30)
    {
        try { return string.Join('\n', File.ReadLines(path).TakeLast(lines)); }
        catch (IOException) { return ""; }
    }

    /// <summary>Runs a program to completion (killed at the timeout); stdout and stderr together.</summary>
    public static (int Exit, string Output) Run(string program, IReadOnlyList<string> args, TimeSpan timeout) =>
        ChildProcess.Run(program, args, timeout);
}
