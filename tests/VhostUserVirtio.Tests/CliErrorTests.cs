using System.Net.Sockets;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Bad input to the command line, end to end (the real executable): every subcommand answers a bad
/// value, an unknown member, a missing daemon or a busy owner with one line on stderr and exit 2,
/// never a stack trace. One daemon serves the rows that reach a device; the others fail while parsing.
/// </summary>
[Trait("tier", "daemon")]
public sealed class CliErrorTests : IClassFixture<CliErrorTests.Daemon>
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);
    private readonly Daemon _daemon;

    public CliErrorTests(Daemon daemon) => _daemon = daemon;

    /// <summary>A daemon with two VFs in a temporary socket folder, for the whole table.</summary>
    public sealed class Daemon : IDisposable
    {
        public string Dir { get; } = Directory.CreateTempSubdirectory("vuv-cli-").FullName;
        public string Pf => Path.Combine(Dir, "pf.sock");
        private DaemonProcess? _process;

        public void EnsureStarted()
        {
            if (_process != null)
                return;
            _process = DaemonProcess.Start(["serve", "--socket-dir", Dir, "--vfs", "2"]);
            _process.WaitUntil(() => File.Exists(Pf) && _process.Output.Contains("ready:"), Deadline, "pf.sock");
        }

        public void Dispose()
        {
            _process?.Dispose();
            try { Directory.Delete(Dir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>Command lines ({pf}: the daemon's owner socket, {dir}: its folder) and a part of the one line each must print.</summary>
    public static TheoryData<string, string> BadCommandLines => new()
    {
        { "admin --socket {pf} vf 1 set-mac 52:54::00:00:01", "MAC '52:54::00:00:01' is not a MAC address" },
        { "admin --socket {pf} vf 1 set-mac 52:54:00:00:00:100", "is not a MAC address" },
        { "admin --socket {pf} legacy write --vf 1 --common 0 0x", "VALUE '0x' is not a number" },
        { "admin --socket {pf} legacy write --vf 1 --common 0 --len 2 0x10000", "does not fit in --len 2" },
        { "admin --socket {pf} legacy read --vf 1", "exactly one of --common OFFSET or --device OFFSET" },
        { "admin --socket {pf} legacy read --vf 1 --common 0 --device 0", "exactly one of --common OFFSET or --device OFFSET" },
        { "admin --socket {pf} legacy read --vf 1 --common 0 --len 9", "--len '9' is not a number from 1 to 8" },
        { "admin --socket {pf} legacy read --vf -1 --common 0", "--vf '-1' is not a number" },
        { "admin --socket {pf} vf abc link up", "ID 'abc' is not a number" },
        { "admin --socket {pf} vf 99999 link up", "ID '99999' is not a number from 0 to 65535" },
        { "admin --socket {pf} vf 1 link sideways", "'sideways' not recognized" },
        { "admin --socket {pf} vfs set -1", "N '-1' is not a number" },
        { "admin --socket {pf} vf 1 msix set 5000", "N '5000' is not a number from 0 to 2048" },
        { "admin --socket {pf}", "Required command was not provided" },
        { "admin --socket {pf} vf 9 link up", "NET_MEMBER_CTRL on member 9 failed: EINVAL/INVALIDMEMBER" },
        { "admin --socket {pf} vfs set 5", "refused num_vfs 5" },
        { "admin --socket {dir}/missing.sock list", "no daemon serves" },
        { "vdev --socket {pf} status 1 set 0x100", "is not a number from 0 to 255" },
        { "vdev --socket {pf} status 1 put 3", "expected: status ID [set VALUE]" },
        { "vdev --socket {pf} cfg 1 read 0 0", "LEN '0' is not a number from 1 to 4096" },
        { "vdev --socket {pf} cfg x read 0 4", "ID 'x' is not a number" },
        { "vdev --socket {pf} msi 1 70000", "VECTOR '70000' is not a number" },
        { "vdev --socket {pf} info 7", "EINVAL/INVALIDMEMBER" },
        { "migrate-member --from {pf} --to {pf} --member 0", "--member '0' is not a number from 1" },
        { "migrate-member --from {pf} --to {pf}", "--member" },
        { "keep -- serve --vfs -1", "--vfs '-1' is not a number" },
        { "serve --vfs x", "--vfs 'x' is not a number" },
        { "serve --fd x", "--fd 'x' is not a number" },
        { "serve --queue-pairs 99", "--queue-pairs '99' is not a number from 1 to 16" },
        { "serve --uplink a-much-too-long-name", "--uplink 'a-much-too-long-name' is not an interface name" },
        { "serve --mac-base 02:56:56:00:00", "--mac-base '02:56:56:00:00' is not a MAC address" },
        { "serve --mac-base 03:00:00:00:00:00", "--mac-base 03:00:00:00:00:00 is a multicast address" },
        { "serve --mac-base 02:ff:ff:ff:ff:00", "leaves no room for the members' MACs" },
        { "--no-such-option", "--no-such-option" },
    };

    [Theory]
    [MemberData(nameof(BadCommandLines))]
    public void A_bad_command_line_gets_one_line_on_stderr_and_exit_2(string commandLine, string message)
    {
        _daemon.EnsureStarted();
        var args = commandLine.Replace("{pf}", _daemon.Pf, StringComparison.Ordinal)
            .Replace("{dir}", _daemon.Dir, StringComparison.Ordinal).Split(' ');
        using var cli = DaemonProcess.Run(args);
        AssertOneLineFailure(cli, message);
    }

    [Fact]
    public void Admin_against_an_owner_held_by_another_front_end_says_the_socket_is_in_use()
    {
        _daemon.EnsureStarted();
        using var holder = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        holder.Connect(new UnixDomainSocketEndPoint(_daemon.Pf));
        using var cli = DaemonProcess.Run("admin", "--socket", _daemon.Pf, "list");
        AssertOneLineFailure(cli, "is in use by another front end");
    }

    [Fact]
    public void An_uplink_the_daemon_may_not_create_says_CAP_NET_ADMIN_is_needed()
    {
        // A user namespace of its own: root inside, but without CAP_NET_ADMIN over the host's network
        // namespace, as a daemon run by an unprivileged user is.
        using var dir = new TempDir();
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", dir.Path, "--uplink", "vuvcap0"],
            launcher: ["unshare", "--user", "--map-root-user"]);
        Assert.True(daemon.WaitForExit(Deadline), "the daemon should give up:\n" + daemon.Output);
        Assert.True(daemon.ExitCode == 2, $"exit code {daemon.ExitCode}:\n{daemon.Output}");
        Assert.Contains("TAP interface vuvcap0 needs CAP_NET_ADMIN", daemon.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", daemon.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("ready:", daemon.Output, StringComparison.Ordinal);
    }

    [Fact]
    public void A_daemon_that_cannot_start_under_the_keeper_is_not_restarted()
    {
        // A first start that fails with 2 would fail the same way again: the keeper gives up at once
        // with that code, rather than restarting it forever.
        using var dir = new TempDir();
        var notADirectory = Path.Combine(dir.Path, "file");
        File.WriteAllText(notADirectory, "");
        using var keeper = DaemonProcess.Start(["keep", "--", "serve", "--socket-dir", notADirectory]);
        Assert.True(keeper.WaitForExit(Deadline), "the keeper kept restarting a daemon that cannot start:\n" + keeper.Output);
        Assert.True(keeper.ExitCode == 2, $"exit code {keeper.ExitCode}:\n{keeper.Output}");
        Assert.Contains("cannot serve on", keeper.Output, StringComparison.Ordinal);
        Assert.Contains("not restarting it", keeper.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", keeper.Output, StringComparison.Ordinal);
    }

    private static void AssertOneLineFailure(DaemonProcess cli, string message)
    {
        var lines = cli.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(cli.ExitCode == 2, $"exit code {cli.ExitCode}:\n{cli.Output}");
        Assert.True(lines.Length == 1, $"expected one line:\n{cli.Output}");
        Assert.Equal("", cli.StandardOutput);
        Assert.Contains(message, lines[0], StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", cli.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", cli.Output, StringComparison.Ordinal);
    }

    private sealed class TempDir : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("vuv-cap-").FullName;
        public void Dispose()
        {
            try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
        }
    }
}
