using System.Buffers.Binary;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The daemon's --admin-profile option: the seed profile served by the real process.</summary>
[Trait("tier", "daemon")]
public sealed class SeedProfileDaemonTests
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(20);

    [Fact]
    public void The_daemon_serves_the_seed_profile_when_asked_and_refuses_an_unknown_one()
    {
        using (var bad = DaemonProcess.Run("serve", "--admin-profile", "draft"))
        {
            Assert.NotEqual(0, bad.ExitCode);
            Assert.Contains("draft", bad.Output);
        }
        var dir = Path.Combine(Path.GetTempPath(), "vuvs-" + Guid.NewGuid().ToString("N")[..12]);
        try
        {
            using var daemon = DaemonProcess.Start(["serve", "--socket-dir", dir, "--vfs", "1", "--admin-profile", "seed"]);
            var pf = Path.Combine(dir, "pf.sock");
            daemon.WaitUntil(() => File.Exists(pf) && daemon.Output.Contains("ready:"), Deadline, "the owner's socket");
            using (var owner = OwnerDriver.Connect(pf))
            {
                var list = owner.Admin.Execute(0, SrIov, 0, [], 16);
                Assert.True(list.Ok, list.Describe());
                Assert.Equal(0x3f80UL, BinaryPrimitives.ReadUInt64LittleEndian(list.Result) & 0x3ff80);
            }
            daemon.Terminate();
            Assert.True(daemon.WaitForExit(Deadline));
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}
