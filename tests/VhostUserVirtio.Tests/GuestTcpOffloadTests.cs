using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A Linux guest's TCP through the switch with offloads: iperf3 moves a counted transfer from one
/// VF to the other, once with both NICs taking checksum and TSO offloads (GSO frames pass through
/// whole) and once with the receiving NIC's offloads off in QEMU (the switch segments them).
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestTcpOffloadTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan BootDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan ScriptDeadline = TimeSpan.FromMinutes(6);
    private const string MacA = "02:56:56:00:00:01", MacB = "02:56:56:00:00:02";
    private const long Bytes = 16 << 20;

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-tcp-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_counted_iperf3_transfer_completes_with_offloads_passed_through_or_done_in_software(bool receiverOffloads)
    {
        using var backend = new GroupBackend(vfs: 2);
        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "tcp-offload-" + (receiverOffloads ? "both" : "sender-only"),
            Tools = true,
            Nics = [new GuestNic(backend.Socket(1), MacA), new GuestNic(backend.Socket(2), MacB, DeviceOptions: receiverOffloads ? "" : GuestScripts.NoOffloads)],
            TestScript = GuestScripts.PingPair(MacA, MacB, count: 2, intervalSeconds: 0.2, bothWays: false, then: GuestScripts.IperfTransfer(Bytes)),
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        guest.WaitForBoot(BootDeadline);
        int status = guest.WaitForTestExit(ScriptDeadline);
        var result = GuestScripts.ParseIperf(guest.Lines);
        var sender = backend.Member(1).Device.Counters;
        var receiver = backend.Member(2).Device.Counters;
        output.WriteLine($"iperf3: {result}\nvf1: {sender}\nvf2: {receiver}");

        Assert.True(status == 0, $"script exit {status}. {guest.Describe()}");
        Assert.NotNull(result);
        // iperf3 -n stops at the first whole block (128 KiB) at or past the count. Its "sent" is what
        // the client wrote into its socket, and its server stops counting when the client's
        // end-of-test message arrives, so whatever was still in flight or being retransmitted then
        // (up to a TCP window: seen 256 KiB with offloads, 1.1 MiB when segments met full receive
        // rings) is not in the received total. A data path that corrupted or lost segments for good
        // shows as a stalled transfer (timeout, nonzero exit) or a small fraction received.
        Assert.Equal(0, result.ExitCode);
        Assert.InRange(result.Sent, Bytes, Bytes + (128 << 10));
        Assert.InRange(result.Received, result.Sent / 2, result.Sent);
        if (receiverOffloads)
        {
            Assert.True(receiver.OffloadsPassedThrough > 0, "no offloaded frame reached vf2 whole");
            Assert.Equal(0, receiver.FramesSegmented);
        }
        else
        {
            Assert.True(receiver.FramesSegmented > 0, "no GSO frame was segmented for vf2");
            Assert.Equal(0, receiver.OffloadsPassedThrough);
        }
        Assert.Equal(0, sender.Drops(Devices.Switch.DropReason.BadHeader) + receiver.Drops(Devices.Switch.DropReason.BadHeader));
    }
}
