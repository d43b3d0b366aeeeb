using System.Diagnostics;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// --socket-group and --socket-mode on the daemon: a front end running as another user in the group
/// (as libvirt runs QEMU) can connect to every socket, also after a restart, and cannot without them.
/// The other user is `nobody` in group `nogroup` (65534), reached with setpriv (util-linux) running
/// /usr/bin/python3 to connect; the tests run as root.
/// </summary>
[Trait("tier", "daemon")]
public sealed class SocketGroupDaemonTests : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);
    private const uint NoGroup = 65534;
    private const uint Mode0660 = 0x1B0, Mode0750 = 0x1E8;

    private readonly string _root = Directory.CreateTempSubdirectory("vuv-group-").FullName;

    public SocketGroupDaemonTests()
    {
        // The temporary folder is 0700; the other user must be able to walk through it to the sockets.
        if (OperatingSystem.IsLinux())
            File.SetUnixFileMode(_root, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute |
                UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
    }

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    private string Sockets => Path.Combine(_root, "sockets");

    private DaemonProcess StartDaemon(params string[] access)
    {
        var daemon = DaemonProcess.Start(["serve", "--socket-dir", Sockets, "--vfs", "1", .. access]);
        daemon.WaitUntil(() => daemon.Output.Contains("ready:"), Deadline, "the ready line");
        return daemon;
    }

    private static void Stop(DaemonProcess daemon)
    {
        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline), "daemon did not exit after SIGTERM:\n" + daemon.Output);
    }

    /// <summary>Connects to <paramref name="socket"/> as nobody:nogroup with no other groups; null on success, else the error.</summary>
    private static string? ConnectAsNobody(string socket)
    {
        var info = new ProcessStartInfo("setpriv")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                     "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.close()", socket })
            info.ArgumentList.Add(a);
        using var p = Process.Start(info)!;
        string error = p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(Deadline), "the connect as nobody did not finish");
        return p.ExitCode == 0 ? null : error.Trim();
    }

    private static void AssertGroupAccess(string path, uint mode)
    {
        var access = SocketAccess.Of(path);
        Assert.True(access != null, $"{path} is missing");
        Assert.Equal((0u, NoGroup, mode), access.Value);
    }

    [Fact]
    public void Another_user_in_the_socket_group_connects_to_every_socket_also_after_a_restart()
    {
        string[] sockets = ["pf.sock", "vf1.sock"];
        using (var daemon = StartDaemon("--socket-group", "nogroup", "--socket-mode", "0660"))
        {
            AssertGroupAccess(Sockets, Mode0750);
            foreach (var s in sockets)
            {
                AssertGroupAccess(Path.Combine(Sockets, s), Mode0660);
                Assert.Null(ConnectAsNobody(Path.Combine(Sockets, s)));
            }
            // A managed device's socket, made at run time through the owner's transport queue.
            using (var cli = DaemonProcess.Run("vdev", "--socket", Path.Combine(Sockets, "pf.sock"), "create"))
                Assert.True(cli.ExitCode == 0, cli.Output);
            string vdev = Path.Combine(Sockets, "vdev1.sock");
            daemon.WaitUntil(() => File.Exists(vdev), Deadline, "vdev1.sock");
            AssertGroupAccess(vdev, Mode0660);
            Assert.Null(ConnectAsNobody(vdev));
            // The control socket steers the daemon: it stays its user's alone whatever the group.
            string control = Path.Combine(Sockets, "vhost-virtio.ctl");
            Assert.Equal((0u, 0u, 0x180u), SocketAccess.Of(control));
            Assert.Contains("Permission denied", ConnectAsNobody(control) ?? "nobody connected to the control socket", StringComparison.Ordinal);
            Stop(daemon);
        }

        // A restarted daemon binds its sockets anew: they come back with the same group and mode.
        using (var daemon = StartDaemon("--socket-group", "65534"))
        {
            foreach (var s in sockets)
            {
                AssertGroupAccess(Path.Combine(Sockets, s), Mode0660);
                Assert.Null(ConnectAsNobody(Path.Combine(Sockets, s)));
            }
            Stop(daemon);
        }
    }

    [Fact]
    public void Without_the_options_another_user_is_refused()
    {
        using var daemon = StartDaemon();
        string vf1 = Path.Combine(Sockets, "vf1.sock");
        Assert.Equal(0u, SocketAccess.Of(vf1)!.Value.Group);
        var error = ConnectAsNobody(vf1);
        Assert.True(error != null, "nobody connected to a root-owned socket without the options");
        Assert.Contains("Permission denied", error, StringComparison.Ordinal);
        Stop(daemon);
    }

    [Theory]
    [InlineData("--socket-group", "no-such-group-vuv", "--socket-group no-such-group-vuv: no group named 'no-such-group-vuv'")]
    [InlineData("--socket-mode", "0986", "--socket-mode 0986: '0986' is not octal permission bits")]
    [InlineData("--socket-mode", "4755", "--socket-mode 4755:")]
    public void A_bad_socket_group_or_mode_is_one_line_and_exit_code_2(string option, string value, string message)
    {
        using var daemon = DaemonProcess.Run("serve", "--socket-dir", Sockets, option, value);
        Assert.True(daemon.ExitCode == 2, $"exit code {daemon.ExitCode}:\n{daemon.Output}");
        Assert.Contains(message, daemon.Output, StringComparison.Ordinal);
        Assert.Single(daemon.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.False(Directory.Exists(Sockets), "the socket folder was created for a refused command line");
    }
}
