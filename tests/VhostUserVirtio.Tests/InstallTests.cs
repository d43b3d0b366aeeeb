using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// scripts/install.sh as an operator runs it: the self-contained build it installs runs on its own
/// (no `dotnet` in front), answers --print-capabilities, serves and switches, notifies readiness;
/// its vhost-user descriptor is what QEMU's docs/interop/vhost-user.json calls a VhostUserBackend;
/// its systemd unit passes `systemd-analyze verify`.
/// </summary>
[Trait("tier", "daemon")]
public sealed class InstallTests(InstalledService installed) : IClassFixture<InstalledService>, IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);
    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-installed-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void The_descriptor_is_a_VhostUserBackend_naming_the_installed_binary()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(installed.Descriptor));
        var root = doc.RootElement;
        // VhostUserBackend: description, type and binary required, tags optional, nothing else.
        Assert.Empty(root.EnumerateObject().Select(p => p.Name).Except(["description", "type", "binary", "tags"]));
        Assert.False(string.IsNullOrWhiteSpace(root.GetProperty("description").GetString()));
        Assert.Equal("net", root.GetProperty("type").GetString());
        var binary = root.GetProperty("binary").GetString()!;
        Assert.Equal(installed.Binary, binary);
        Assert.True(File.Exists(binary), $"{binary} is not there");
        if (OperatingSystem.IsLinux())
            Assert.True((File.GetUnixFileMode(binary) & UnixFileMode.UserExecute) != 0, $"{binary} is not executable");
    }

    [Fact]
    public void The_installed_binary_runs_by_itself_and_prints_the_capabilities_of_the_descriptors_type()
    {
        var (code, output) = InstalledService.Run(installed.Binary, ["--print-capabilities"], Deadline);
        Assert.True(code == 0, output);
        using var capabilities = JsonDocument.Parse(output);
        using var descriptor = JsonDocument.Parse(File.ReadAllText(installed.Descriptor));
        Assert.Equal(descriptor.RootElement.GetProperty("type").GetString(), capabilities.RootElement.GetProperty("type").GetString());
        Assert.Equal(["type"], capabilities.RootElement.EnumerateObject().Select(p => p.Name));
    }

    [Fact]
    public void The_installed_binary_serves_switches_notifies_READY_and_stops_on_SIGTERM()
    {
        var notify = Path.Combine(_dir, "notify");
        using var manager = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified) { ReceiveTimeout = (int)Deadline.TotalMilliseconds };
        manager.Bind(new UnixDomainSocketEndPoint(notify));
        var sockets = Path.Combine(_dir, "s");
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", sockets, "--vfs", "2"],
            environment: new Dictionary<string, string> { [ServiceNotifier.EnvironmentVariable] = notify }, executable: installed.Binary);

        var buffer = new byte[4096];
        string ready;
        try { ready = Encoding.UTF8.GetString(buffer, 0, manager.Receive(buffer)); }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut) { Assert.Fail("no READY=1 from the installed daemon:\n" + daemon.Output); throw; }
        Assert.Contains("READY=1", ready.Split('\n'));

        using (var vf1 = new NetFrontEnd(Path.Combine(sockets, "vf1.sock")))
        using (var vf2 = new NetFrontEnd(Path.Combine(sockets, "vf2.sock")))
            NetCheck.AssertSwitches(vf1, vf2);

        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline), "the installed daemon did not exit after SIGTERM:\n" + daemon.Output);
        Assert.True(daemon.ExitCode == 0, $"exit code {daemon.ExitCode}:\n{daemon.Output}");
    }

    [Fact]
    public void The_unit_passes_systemd_analyze_verify()
    {
        // verify loads the unit as systemd would, without systemd running as PID 1: every key known and
        // every value valid (it warns otherwise, with exit code 0: hence no output at all is demanded),
        // ExecStart's program present and executable. It neither starts the unit nor checks readiness.
        Assert.True(File.Exists("/usr/bin/systemd-analyze") || File.Exists("/bin/systemd-analyze"),
            "systemd-analyze is missing: bash scripts/setup.sh --tests installs systemd");
        var (code, output) = InstalledService.Run("systemd-analyze", ["verify", installed.Unit], Deadline);
        Assert.True(code == 0 && output.Trim().Length == 0, $"systemd-analyze verify exited {code}:\n{output}");

        var unit = File.ReadAllLines(installed.Unit);
        Assert.Contains("Type=notify", unit);
        Assert.Contains("NotifyAccess=all", unit);
        Assert.Contains("RuntimeDirectory=vhost-virtio", unit);
        Assert.Contains("Restart=on-failure", unit);
        Assert.Contains(unit, l => l.StartsWith($"ExecStart={installed.Binary} ", StringComparison.Ordinal) && l.Contains("--socket-dir /run/vhost-virtio"));
    }

    [Fact]
    public void Under_a_staging_root_paths_name_the_prefix_the_link_is_relative_and_no_systemd_leaves_the_unit_out()
    {
        var root = Path.Combine(installed.StagingRoot, "usr", "local");
        var link = new FileInfo(Path.Combine(root, "bin", "vhost-virtio"));
        Assert.Equal("../lib/vhost-virtio/vhost-virtio", link.LinkTarget);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "share", "qemu", "vhost-user", "50-vhost-virtio.json")));
        Assert.Equal("/usr/local/bin/vhost-virtio", doc.RootElement.GetProperty("binary").GetString());
        Assert.False(Directory.Exists(Path.Combine(root, "lib", "systemd")), "--no-systemd installed a unit");
        var (code, output) = InstalledService.Run(link.FullName, ["--print-capabilities"], Deadline);
        Assert.True(code == 0, output);
    }

    [Theory]
    [InlineData("relative/prefix")]
    [InlineData("/opt/with space")]
    [InlineData("/opt/100%")]
    public void A_prefix_the_unit_or_descriptor_would_misread_is_refused_before_building(string prefix)
    {
        var (code, output) = InstalledService.Run("bash", [Path.Combine(TestPmd.RepositoryRoot(), "scripts", "install.sh"), "--prefix", prefix], Deadline);
        Assert.Equal(1, code);
        Assert.Contains("--prefix must be an absolute path", output);
        Assert.DoesNotContain("publishing", output);
    }
}
