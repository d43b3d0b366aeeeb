using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>`vhost-virtio vdev …`: managed devices from the command line, through the owner's transport queue.</summary>
[Trait("tier", "daemon")]
public sealed class VdevCliTests : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);
    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-vdev-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private DaemonProcess Serve()
    {
        var pf = Path.Combine(_dir, "pf.sock");
        var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "1"]);
        daemon.WaitUntil(() => File.Exists(pf) && daemon.Output.Contains("ready:"), Deadline, "pf.sock");
        return daemon;
    }

    [Fact]
    public void Vdev_cli_without_an_owner_on_the_socket_exits_2_with_the_reason()
    {
        using var cli = DaemonProcess.Run("vdev", "--socket", Path.Combine(_dir, "missing.sock"), "list");
        Assert.Equal(2, cli.ExitCode);
        Assert.Contains("vhost-virtio vdev: ", cli.Output, StringComparison.Ordinal);
    }

    [Fact]
    public void Vdev_cli_refuses_a_malformed_status_or_config_request_before_connecting()
    {
        var pf = Path.Combine(_dir, "pf.sock");
        // No owner listens on pf: each message is about the request, not about connecting.
        using (var cli = DaemonProcess.Run("vdev", "--socket", pf, "status", "1", "put", "3"))
            Assert.True(cli.ExitCode == 2 && cli.Output.Contains("expected: status ID [set VALUE]", StringComparison.Ordinal), cli.Output);
        using (var cli = DaemonProcess.Run("vdev", "--socket", pf, "status", "1", "set", "0x100"))
            Assert.True(cli.ExitCode == 2 && cli.Output.Contains("is not a number from 0 to 255", StringComparison.Ordinal), cli.Output);
        using (var cli = DaemonProcess.Run("vdev", "--socket", pf, "cfg", "1", "read", "0", "0"))
            Assert.True(cli.ExitCode == 2 && cli.Output.Contains("LEN '0' is not a number from 1 to 4096", StringComparison.Ordinal), cli.Output);
    }

    [Fact]
    public void Vdev_cli_creates_lists_shows_and_destroys_a_managed_device()
    {
        var pf = Path.Combine(_dir, "pf.sock");
        using var daemon = Serve();
        string Ok(params string[] args)
        {
            using var cli = DaemonProcess.Run(["vdev", "--socket", pf, .. args]);
            Assert.True(cli.ExitCode == 0, cli.Output);
            return cli.StandardOutput;
        }
        string Fails(params string[] args)
        {
            using var cli = DaemonProcess.Run(["vdev", "--socket", pf, .. args]);
            Assert.Equal(2, cli.ExitCode);
            return cli.Output;
        }

        Assert.Contains("no managed devices", Ok("list"), StringComparison.Ordinal);
        Assert.Contains("vdev 1 created", Ok("create"), StringComparison.Ordinal);
        daemon.WaitUntil(() => File.Exists(Path.Combine(_dir, "vdev1.sock")), Deadline, "vdev1.sock");
        Assert.Contains("vdev 1", Ok("list"), StringComparison.Ordinal);
        Assert.Contains("vdev 1: net,", Ok("info", "1"), StringComparison.Ordinal);
        Assert.Contains("device features 0x", Ok("features", "1"), StringComparison.Ordinal);
        Assert.Contains("status 0x00 (reset)", Ok("status", "1"), StringComparison.Ordinal);
        Assert.Contains("status 0x01 ACKNOWLEDGE", Ok("status", "1", "set", "1"), StringComparison.Ordinal);
        Assert.Contains("config 0x0 (6 byte(s)): ", Ok("cfg", "1", "read", "0", "6"), StringComparison.Ordinal);
        Assert.Contains("vector 0: address 0x", Ok("msi", "1", "0"), StringComparison.Ordinal);
        Assert.Contains("vdev 1 destroyed", Ok("destroy", "1"), StringComparison.Ordinal);
        daemon.WaitUntil(() => !File.Exists(Path.Combine(_dir, "vdev1.sock")), Deadline, "vdev1.sock to go");
        Assert.Contains("EINVAL/INVALIDMEMBER", Fails("info", "1"), StringComparison.Ordinal);
        Assert.Contains("EINVAL", Fails("destroy", "0"), StringComparison.Ordinal);
    }
}
