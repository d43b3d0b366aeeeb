using System.Text.Json;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The vhost-virtio executable end to end: real process, real sockets, real signals. Deadlines are
/// generous because a cold `dotnet` start on a busy 2-core machine is slow; nothing here measures speed.
/// </summary>
[Trait("tier", "daemon")]
public sealed class DaemonTests : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-d-" + Guid.NewGuid().ToString("N")[..12]);

    public DaemonTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void Serve_brings_up_the_group_switches_between_vfs_and_stops_cleanly_on_SIGTERM()
    {
        var sockets = new[] { "pf.sock", "vf1.sock", "vf2.sock" }.Select(f => Path.Combine(_dir, f)).ToArray();
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "2"]);
        daemon.WaitUntil(() => sockets.All(File.Exists) && daemon.Output.Contains("ready:"), Deadline, "the group's sockets and the ready line");

        // A front end still connected at shutdown must be disconnected, not left hanging.
        using var vf1 = new NetFrontEnd(sockets[1]);
        using var vf2 = new NetFrontEnd(sockets[2]);
        NetCheck.AssertSwitches(vf1, vf2);

        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline), "daemon did not exit after SIGTERM:\n" + daemon.Output);
        Assert.True(daemon.ExitCode == 0, $"exit code {daemon.ExitCode}:\n{daemon.Output}");
        Assert.True(vf1.Session.Connection.WaitForClose((int)Deadline.TotalMilliseconds), "front end was not disconnected");
        Assert.All(sockets, s => Assert.False(File.Exists(s), $"{s} left behind"));
        Assert.Contains("SIGTERM", daemon.Output);
    }

    [Fact]
    public void Default_configuration_needs_no_arguments()
    {
        using var daemon = DaemonProcess.Start([], workingDirectory: _dir);
        var sockets = new[] { "pf.sock", "vf1.sock", "vf2.sock" }.Select(f => Path.Combine(_dir, "sockets", f)).ToArray();
        daemon.WaitUntil(() => sockets.All(File.Exists) && daemon.Output.Contains("ready:"), Deadline, "./sockets/{pf,vf1,vf2}.sock");
        using var vf1 = new NetFrontEnd(sockets[1]);
        using var vf2 = new NetFrontEnd(sockets[2]);
        NetCheck.AssertSwitches(vf2, vf1);
        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline));
        Assert.Equal(0, daemon.ExitCode);
    }

    [Fact]
    public void Socket_path_serves_one_device_on_exactly_that_path()
    {
        var socket = Path.Combine(_dir, "vhost.sock");
        using var daemon = DaemonProcess.Start([$"--socket-path={socket}"]);
        daemon.WaitUntil(() => File.Exists(socket) && daemon.Output.Contains("ready:"), Deadline, "the socket");

        NetCheck.AssertDeviceUp(socket);

        daemon.Terminate();
        Assert.True(daemon.WaitForExit(Deadline), "daemon did not exit after SIGTERM:\n" + daemon.Output);
        Assert.Equal(0, daemon.ExitCode);
        Assert.False(File.Exists(socket));
    }

    [Fact]
    public void Fd_serves_one_device_on_an_inherited_listening_socket()
    {
        var socket = Path.Combine(_dir, "inherited.sock");
        DaemonProcess daemon;
        using (var listener = UnixSocket.Listen(socket))
        {
            // The child inherits the descriptor only if it is not close-on-exec (as libvirt hands it over).
            listener.Descriptor.SetInheritable(true);
            daemon = DaemonProcess.Start(["--fd", listener.Descriptor.Number.ToString(), "--log-level", "debug"]);
        }
        using (daemon)
        {
            daemon.WaitUntil(() => daemon.Output.Contains("ready:"), Deadline, "the ready line");
            NetCheck.AssertDeviceUp(socket);

            daemon.Terminate();
            Assert.True(daemon.WaitForExit(Deadline), "daemon did not exit after SIGTERM:\n" + daemon.Output);
            Assert.Equal(0, daemon.ExitCode);
            Assert.True(File.Exists(socket), "an adopted socket's file belongs to whoever created it");
        }
    }

    [Fact]
    public void Admin_cli_lists_commands_and_enables_or_disables_vfs()
    {
        var pf = Path.Combine(_dir, "pf.sock");
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "2"]);
        daemon.WaitUntil(() => File.Exists(pf) && daemon.Output.Contains("ready:"), Deadline, "pf.sock");

        using var cli = DaemonProcess.Run("admin", "--socket", pf, "list");
        Assert.True(cli.ExitCode == 0, cli.Output);
        Assert.Contains("VFs 2 of 2", cli.StandardOutput);
        Assert.Contains("SrIov: 0x0 ListQuery, 0x1 ListUse", cli.StandardOutput);
        Assert.Contains("Self: 0x0 ListQuery, 0x1 ListUse", cli.StandardOutput);

        // NET_MEMBER_CTRL from the command line: a front end on VF1 sees its new MAC and link state.
        using (var vf1 = new NetFrontEnd(Path.Combine(_dir, "vf1.sock")))
        {
            using (var setMac = DaemonProcess.Run("admin", "--socket", pf, "vf", "1", "set-mac", "52:54:00:12:34:99"))
                Assert.True(setMac.ExitCode == 0, setMac.Output);
            Assert.Equal("52:54:00:12:34:99", VhostUserVirtio.Devices.Switch.Mac.Read(vf1.Session.Connection.GetConfig(0, 6)!).ToString());
            // Receive modes: with promiscuous mode off, VF1 takes only frames for its own MAC.
            using (var promiscOff = DaemonProcess.Run("admin", "--socket", pf, "vf", "1", "rx", "promisc", "off"))
                Assert.True(promiscOff.ExitCode == 0, promiscOff.Output);
            using (var vf2 = new NetFrontEnd(Path.Combine(_dir, "vf2.sock")))
            {
                vf1.PostRx(4);
                vf2.Send(NetFrontEnd.Frame("52:54:00:77:77:77", vf2.Mac, "stranger"));
                vf2.Send(NetFrontEnd.Frame("52:54:00:12:34:99", vf2.Mac, "mine"));
                // The stranger frame was flooded first; had the filter let it in, it would arrive first.
                Assert.Contains("mine", System.Text.Encoding.ASCII.GetString(vf1.Receive().Frame));
                Assert.True(vf1.NothingWithin(300));
            }
            using (var down = DaemonProcess.Run("admin", "--socket", pf, "vf", "1", "link", "down"))
                Assert.True(down.ExitCode == 0, down.Output);
            Assert.Equal(0, BitConverter.ToUInt16(vf1.Session.Connection.GetConfig(6, 2)));
            using var bad = DaemonProcess.Run("admin", "--socket", pf, "vf", "9", "link", "up");
            Assert.NotEqual(0, bad.ExitCode);
            Assert.Contains("EINVAL/INVALIDMEMBER", bad.Output);
        }

        using (var msix = DaemonProcess.Run("admin", "--socket", pf, "vf", "2", "msix", "set", "6"))
        {
            Assert.True(msix.ExitCode == 0, msix.Output);
            Assert.Contains("VF 2: 6 MSI-X vectors", msix.StandardOutput);
        }
        using (var show = DaemonProcess.Run("admin", "--socket", pf, "vf", "2", "msix", "show"))
            Assert.Contains("VF 2: 6 MSI-X vectors", show.StandardOutput);
        using (var pool = DaemonProcess.Run("admin", "--socket", pf, "msix"))
            Assert.Contains("16 in the pool, 10 assigned, at most 64 per VF", pool.StandardOutput);
        using (var tooMany = DaemonProcess.Run("admin", "--socket", pf, "vf", "2", "msix", "set", "1000"))
            Assert.Contains("EINVAL/INVALIDFIELD", tooMany.Output);

        using (var disable = DaemonProcess.Run("admin", "--socket", pf, "vfs", "set", "0"))
            Assert.True(disable.ExitCode == 0, disable.Output);
        Assert.False(File.Exists(Path.Combine(_dir, "vf1.sock")), "VF sockets should go when VFs are disabled");
        using (var refused = DaemonProcess.Run("admin", "--socket", pf, "vfs", "set", "5"))
        {
            Assert.NotEqual(0, refused.ExitCode);
            Assert.Contains("refused num_vfs 5", refused.Output);
        }

        using var missing = DaemonProcess.Run("admin", "--socket", Path.Combine(_dir, "nobody.sock"), "list");
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("vhost-virtio admin:", missing.Output);
    }

    [Fact]
    public void Admin_cli_reads_and_writes_a_vfs_legacy_registers_and_names_refusals()
    {
        var pf = Path.Combine(_dir, "pf.sock");
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "2"]);
        daemon.WaitUntil(() => File.Exists(pf) && daemon.Output.Contains("ready:"), Deadline, "pf.sock");

        using (var features = DaemonProcess.Run("admin", "--socket", pf, "legacy", "read", "--vf", "1", "--common", "0", "--len", "4"))
        {
            Assert.True(features.ExitCode == 0, features.Output);
            Assert.Matches(@"VF 1 common 0 \(4 byte\(s\)\): 0x[0-9a-f]{8}", features.StandardOutput);
        }
        using (var mac = DaemonProcess.Run("admin", "--socket", pf, "legacy", "read", "--vf", "2", "--device", "0", "--len", "6"))
        {
            Assert.True(mac.ExitCode == 0, mac.Output);
            Assert.Contains("bytes 025656000002", mac.StandardOutput);
        }
        // Register state lives in the device, not in the CLI's connection.
        using (var select = DaemonProcess.Run("admin", "--socket", pf, "legacy", "write", "--vf", "1", "--common", "14", "--len", "2", "0x1"))
            Assert.True(select.ExitCode == 0, select.Output);
        using (var readBack = DaemonProcess.Run("admin", "--socket", pf, "legacy", "read", "--vf", "1", "--common", "14", "--len", "2"))
            Assert.Contains("0x0001 (1)", readBack.StandardOutput);
        using (var straddle = DaemonProcess.Run("admin", "--socket", pf, "legacy", "read", "--vf", "1", "--common", "2", "--len", "4"))
        {
            Assert.NotEqual(0, straddle.ExitCode);
            Assert.Contains("EINVAL/INVALIDFIELD", straddle.Output);
        }
        using (var info = DaemonProcess.Run("admin", "--socket", pf, "legacy", "notify-info", "--vf", "2"))
            Assert.Contains("VF 2: member BAR2 offset 0x0", info.StandardOutput);
    }

    [Fact]
    public void Print_capabilities_prints_only_the_members_vhost_user_json_defines_for_net_and_exits_0()
    {
        using var daemon = DaemonProcess.Run("--print-capabilities");
        Assert.True(daemon.ExitCode == 0, daemon.Output);
        using var doc = JsonDocument.Parse(daemon.StandardOutput);
        // VHostUserBackendCapabilities is a union on "type" whose "net" branch adds nothing (only input
        // and gpu have a "features" list): the document is {"type": "net"} and no more.
        Assert.Equal("net", doc.RootElement.GetProperty("type").GetString());
        Assert.Equal(["type"], doc.RootElement.EnumerateObject().Select(p => p.Name));
    }

    [Theory]
    [InlineData("--vfs", "-1")]
    [InlineData("--queue-pairs", "0")]
    [InlineData("--mtu", "20")]
    [InlineData("--max-macs-per-port", "0")]
    [InlineData("--log-level", "loud")]
    [InlineData("--socket-path", "/tmp/a.sock", "--fd", "3")]
    [InlineData("--no-such-option")]
    public void Bad_arguments_exit_non_zero_with_a_message(params string[] args)
    {
        using var daemon = DaemonProcess.Run(["serve", .. args]);
        Assert.NotEqual(0, daemon.ExitCode);
        Assert.True(args.Any(a => daemon.Output.Contains(a)), "the message should name the offending argument:\n" + daemon.Output);
        Assert.DoesNotContain("ready:", daemon.Output);
    }

    [Fact]
    public void A_socket_that_cannot_be_created_fails_early()
    {
        var notADirectory = Path.Combine(_dir, "file");
        File.WriteAllText(notADirectory, "");
        using var daemon = DaemonProcess.Run("serve", "--socket-dir", notADirectory);
        Assert.NotEqual(0, daemon.ExitCode);
        Assert.Contains("cannot serve on", daemon.Output);
        Assert.DoesNotContain("ready:", daemon.Output);
    }
}
