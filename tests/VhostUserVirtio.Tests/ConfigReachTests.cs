using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Whether an owner's change to a VF's config space can reach the VF's driver: the CLI warns when
/// the VF's front end did not negotiate VHOST_USER_PROTOCOL_F_CONFIG (what QEMU's vhost-user-net
/// does), and `--vf-config-space off` stops the VFs offering it while the owner keeps it.
/// </summary>
[Trait("tier", "daemon")]
public sealed class ConfigReachTests : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-cr-" + Guid.NewGuid().ToString("N")[..12]);

    public ConfigReachTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private DaemonProcess Serve(params string[] extra)
    {
        var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "2", .. extra]);
        daemon.WaitUntil(() => File.Exists(Path.Combine(_dir, "vf2.sock")) && daemon.Output.Contains("ready:"), Deadline, "the group's sockets");
        return daemon;
    }

    private DaemonProcess Admin(params string[] args)
    {
        var cli = DaemonProcess.Run(["admin", "--socket", Path.Combine(_dir, "pf.sock"), .. args]);
        Assert.True(cli.ExitCode == 0, cli.Output);
        return cli;
    }

    [Fact]
    public void Link_and_mac_changes_warn_when_the_vfs_front_end_does_not_read_config_space()
    {
        using var daemon = Serve();
        // VF1's front end declines CONFIG, as QEMU does; VF2's takes everything offered.
        using var vf1 = FrontEndSession.Start(Path.Combine(_dir, "vf1.sock"), new FrontEndSession.Options
        {
            WantedProtocolFeatures = ~ProtocolFeatures.Config,
        });
        using var vf2 = new NetFrontEnd(Path.Combine(_dir, "vf2.sock"));
        Assert.Equal(ProtocolFeatures.None, vf1.Connection.Negotiated & ProtocolFeatures.Config);

        using (var down = Admin("vf", "1", "link", "down"))
        {
            Assert.Contains("VF 1's front end did not negotiate VHOST_USER_PROTOCOL_F_CONFIG", down.Output);
            Assert.Contains("still sees its carrier up", down.Output);
            Assert.Contains("set_link", down.Output);
        }
        using (var mac = Admin("vf", "1", "set-mac", "52:54:00:00:00:61"))
            Assert.Contains("-device virtio-net-pci,mac=", mac.Output);
        // Receive modes live in the device alone: nothing to warn about.
        using (var rx = Admin("vf", "1", "rx", "promisc", "off"))
            Assert.DoesNotContain("warning", rx.Output);

        // A front end that reads config space sees the change: no warning, and the new state is there.
        using (var down2 = Admin("vf", "2", "link", "down"))
            Assert.DoesNotContain("warning", down2.Output);
        Assert.Equal(0, BitConverter.ToUInt16(vf2.Session.Connection.GetConfig(6, 2)));
        using (var mac2 = Admin("vf", "2", "set-mac", "52:54:00:00:00:62"))
            Assert.DoesNotContain("warning", mac2.Output);
        Assert.Equal("52:54:00:00:00:62", vf2.Mac);
    }

    [Fact]
    public void A_vf_without_a_front_end_gets_a_warning_that_says_so()
    {
        using var daemon = Serve();
        using var down = Admin("vf", "2", "link", "down");
        Assert.Contains("VF 2 has no front end connected", down.Output);
    }

    [Fact]
    public void With_vf_config_space_off_the_vfs_do_not_offer_config_and_the_owner_still_does()
    {
        using var daemon = Serve("--vf-config-space", "off");
        using (var vf = VhostUserFrontEnd.Connect(Path.Combine(_dir, "vf1.sock")))
            Assert.Equal(ProtocolFeatures.None, vf.GetProtocolFeatures() & ProtocolFeatures.Config);
        using (var pf = VhostUserFrontEnd.Connect(Path.Combine(_dir, "pf.sock")))
            Assert.Equal(ProtocolFeatures.Config, pf.GetProtocolFeatures() & ProtocolFeatures.Config);
        // The owner's information block is read through GET_CONFIG: the admin CLI still works.
        using (var list = Admin("list"))
            Assert.Contains("VFs 2 of 2", list.StandardOutput);

        using var vf1 = new NetFrontEnd(Path.Combine(_dir, "vf1.sock"));
        using var down = Admin("vf", "1", "link", "down");
        Assert.Contains("did not negotiate VHOST_USER_PROTOCOL_F_CONFIG", down.Output);
    }
}
