using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A guest that breaks the rules of its packed ring breaks that ring only: the fault is logged and
/// the error descriptor signalled, while the member's other ring and every other member (split or
/// packed) keep forwarding.
/// </summary>
[Trait("tier", "unit")]
public sealed class PackedRingIsolationTests : IDisposable
{
    private const string A = "02:56:56:00:00:01", B = "02:56:56:00:00:02", Bcast = "ff:ff:ff:ff:ff:ff";
    private readonly GroupBackend _backend = new(vfs: 2);

    public void Dispose() => _backend.Dispose();

    [Theory]
    [InlineData("outside memory")]
    [InlineData("id out of range")]
    [InlineData("misshapen indirect table")]
    public void A_hostile_packed_transmit_ring_breaks_only_itself(string attack)
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), packed: true);
        using var vf2 = new NetFrontEnd(_backend.Socket(2), packed: true);
        using var pf = new NetFrontEnd(_backend.Socket(0));
        vf1.PostRx(4); vf2.PostRx(4); pf.PostRx(4);

        var tx = vf1.Tx;
        ulong buffer = vf1.Session.Ram.Allocate(256, 64);
        ushort avail = PackedRing.AvailableFlags(tx.PackedAvailWrap);
        RingErrorKind expected;
        switch (attack)
        {
            case "outside memory":
                tx.WritePackedDescriptor(0, 0x7000_0000_0000, 256, 0, avail);
                expected = RingErrorKind.BufferOutsideMemory;
                break;
            case "id out of range":
                tx.WritePackedDescriptor(0, buffer, 256, (ushort)tx.Size, avail);
                expected = RingErrorKind.BufferIdOutOfRange;
                break;
            default:
                tx.WritePackedDescriptor(0, buffer, 24, 0, (ushort)(avail | PackedRing.DescIndirect));
                expected = RingErrorKind.IndirectTableLength;
                break;
        }
        tx.Notify();

        var ring = _backend.Member(1).Endpoint.Backend.Queues[1];
        Assert.True(vf1.Session.ErrorFds[1].Wait(10_000), "the back end did not signal the ring's error descriptor");
        Assert.Equal(expected, ring.Ring.Fault?.Kind);
        Assert.True(_backend.Logs.WaitForWarning("broke the ring rules"), _backend.Logs.Dump());

        // The member's receive ring and the other members are untouched.
        var hello = NetFrontEnd.Frame(Bcast, B, "still there?");
        vf2.Send(hello);
        Assert.Equal(hello, vf1.Receive().Frame);
        Assert.Equal(hello, pf.Receive().Frame);
        var reply = NetFrontEnd.Frame(B, pf.Mac, "yes");
        pf.Send(reply);
        Assert.Equal(reply, vf2.Receive().Frame);
    }
}
