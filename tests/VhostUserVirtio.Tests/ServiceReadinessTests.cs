using System.Net.Sockets;
using System.Text;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The daemon as a systemd Type=notify service sees it, with a datagram socket standing in for the
/// manager's $NOTIFY_SOCKET: READY=1 only once every socket exists, STOPPING=1 when SIGTERM arrives,
/// and the same under the session keeper, whose daemon child is the one that notifies (the unit's
/// NotifyAccess=all).
/// </summary>
[Trait("tier", "daemon")]
public sealed class ServiceReadinessTests : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);
    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-ready-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private string[] Sockets => new[] { "pf.sock", "vf1.sock", "vf2.sock" }.Select(f => Path.Combine(_dir, "s", f)).ToArray();

    /// <summary>The manager's end: a datagram socket the daemon is told about through NOTIFY_SOCKET.</summary>
    private Socket Manager(out Dictionary<string, string> environment)
    {
        var path = Path.Combine(_dir, "notify");
        var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified) { ReceiveTimeout = (int)Deadline.TotalMilliseconds };
        socket.Bind(new UnixDomainSocketEndPoint(path));
        environment = new() { [ServiceNotifier.EnvironmentVariable] = path };
        return socket;
    }

    /// <summary>The next notification, or a failure naming what was awaited and the daemon's log.</summary>
    private static string Receive(Socket manager, DaemonProcess daemon, string what)
    {
        var buffer = new byte[4096];
        try
        {
            return Encoding.UTF8.GetString(buffer, 0, manager.Receive(buffer));
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut)
        {
            Assert.Fail($"no {what} notification within {Deadline.TotalSeconds} s:\n{daemon.Output}");
            throw;
        }
    }

    private void AssertReadyMeansServing(string message, DaemonProcess daemon)
    {
        Assert.Contains("READY=1", message.Split('\n'));
        // READY=1 is the promise a unit ordered before QEMU relies on: every socket is there and accepts.
        Assert.All(Sockets, s => Assert.True(File.Exists(s), $"READY=1 before {s} existed:\n{daemon.Output}"));
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        probe.Connect(new UnixDomainSocketEndPoint(Sockets[1]));
    }

    [Fact]
    public void Serve_notifies_READY_once_its_sockets_exist_and_STOPPING_at_SIGTERM()
    {
        using var manager = Manager(out var environment);
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", Path.Combine(_dir, "s"), "--vfs", "2"], environment: environment);

        AssertReadyMeansServing(Receive(manager, daemon, "READY=1"), daemon);

        daemon.Terminate();
        Assert.Contains("STOPPING=1", Receive(manager, daemon, "STOPPING=1").Split('\n'));
        Assert.True(daemon.WaitForExit(Deadline), "daemon did not exit after SIGTERM:\n" + daemon.Output);
        Assert.True(daemon.ExitCode == 0, $"exit code {daemon.ExitCode}:\n{daemon.Output}");
    }

    [Fact]
    public void Under_the_keeper_the_daemon_notifies_READY_and_STOPPING_for_the_unit()
    {
        using var manager = Manager(out var environment);
        using var keeper = DaemonProcess.Start(["keep", "--", "serve", "--socket-dir", Path.Combine(_dir, "s"), "--vfs", "2"], environment: environment);

        AssertReadyMeansServing(Receive(manager, keeper, "READY=1"), keeper);

        keeper.Terminate(); // as systemd's KillMode=mixed does: SIGTERM to the keeper alone, which passes it on
        Assert.Contains("STOPPING=1", Receive(manager, keeper, "STOPPING=1").Split('\n'));
        Assert.True(keeper.WaitForExit(Deadline), "keeper did not exit after SIGTERM:\n" + keeper.Output);
        Assert.True(keeper.ExitCode == 0, $"exit code {keeper.ExitCode}:\n{keeper.Output}");
    }

    [Fact]
    public void An_unusable_NOTIFY_SOCKET_is_a_warning_and_the_daemon_serves_anyway()
    {
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", Path.Combine(_dir, "s"), "--vfs", "2"],
            environment: new Dictionary<string, string> { [ServiceNotifier.EnvironmentVariable] = "vsock:2:1234" });
        daemon.WaitUntil(() => Sockets.All(File.Exists) && daemon.Output.Contains("ready:"), Deadline, "the sockets and the ready line");
        Assert.Contains("not notifying the service manager", daemon.Output);
        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline));
        Assert.Equal(0, daemon.ExitCode);
    }
}
