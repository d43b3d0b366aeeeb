using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A Linux guest whose virtio-net devices use packed rings (QEMU's packed=on) pings across the
/// switch, next to a guest NIC on a split ring: the stock driver, QEMU's vhost-user ring set-up
/// (the packed ring base, driver and device areas) and our packed ring agree.
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestPackedRingTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan BootDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan ScriptDeadline = TimeSpan.FromMinutes(5);
    private const string MacA = "02:56:56:00:00:01", MacB = "02:56:56:00:00:02";

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-gp-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Theory]
    [InlineData(true, true)]
    [InlineData(true, false)]
    public void Guest_pings_across_the_switch_over_packed_rings(bool packedA, bool packedB)
    {
        using var backend = new GroupBackend(vfs: 2);
        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = $"packed-{packedA}-{packedB}",
            Nics = [new GuestNic(backend.Socket(1), MacA, Packed: packedA), new GuestNic(backend.Socket(2), MacB, Packed: packedB)],
            TestScript = GuestScripts.PingPair(MacA, MacB, count: 10, intervalSeconds: 0.2),
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        guest.WaitForBoot(BootDeadline);
        int status = guest.WaitForTestExit(ScriptDeadline);
        var report = GuestScripts.Parse(guest.Lines);
        output.WriteLine(string.Join("\n", backend.Group.Status().Ports));

        Assert.True(status == 0, $"script exit {status}. {guest.Describe()}");
        Assert.All(report.Pings, p => Assert.True(p.Transmitted == 10 && p.Received == 10, $"{p}. {guest.Describe()}"));
        foreach (var (member, packed) in new[] { (1, packedA), (2, packedB) })
        {
            var queues = backend.Member(member).Endpoint.Backend.Queues;
            Assert.Equal(packed, queues[0].Ring.IsPacked);
            Assert.All(queues, q => Assert.Null(q.Ring.Fault));
        }
    }
}
