using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>virtio-net members joined by the switch, driven by the front-end library as their drivers.</summary>
[Trait("tier", "unit")]
public sealed class NetDeviceTests : IDisposable
{
    // VF1's and VF2's own MACs (untrusted VFs send only from those), and one nobody has.
    private const string A = "02:56:56:00:00:01", B = "02:56:56:00:00:02", C = "52:54:00:00:00:0c", Bcast = "ff:ff:ff:ff:ff:ff";
    private readonly GroupBackend _backend = new(vfs: 2);

    public void Dispose() => _backend.Dispose();

    [Fact]
    public void Broadcast_floods_to_every_other_port_then_unicast_goes_only_to_the_learned_port()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        using var pf = new NetFrontEnd(_backend.Socket(0));
        vf1.PostRx(8); vf2.PostRx(8); pf.PostRx(8);

        var hello = NetFrontEnd.Frame(Bcast, A, "who is there");
        vf1.Send(hello);
        Assert.Equal(hello, vf2.Receive().Frame);
        Assert.Equal(hello, pf.Receive().Frame);

        ushort pfReceived = pf.Rx.UsedIndex;
        var reply = NetFrontEnd.Frame(A, B, "it is me");
        vf2.Send(reply);
        var (numBuffers, frame) = vf1.Receive();
        Assert.Equal(1, numBuffers);
        Assert.Equal(reply, frame);
        Thread.Sleep(300);
        Assert.True(pf.Rx.UsedIndex == pfReceived, "a unicast to a learned MAC was flooded");

        var status = _backend.Group.Status();
        var p1 = status.Ports.Single(p => p.Name == "vf1");
        var p2 = status.Ports.Single(p => p.Name == "vf2");
        Assert.Equal((1L, 1L), (p1.Counters.TxPackets, p1.Counters.RxPackets));
        Assert.Equal((1L, 1L), (p2.Counters.TxPackets, p2.Counters.RxPackets));
        Assert.Contains(status.MacTable, e => e.Mac == A && e.Port == "vf1");
        Assert.Contains(status.MacTable, e => e.Mac == B && e.Port == "vf2");
    }

    [Fact]
    public void Unknown_unicast_is_flooded_and_frames_never_return_to_their_sender()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf1.PostRx(4); vf2.PostRx(4);
        vf1.Send(NetFrontEnd.Frame(C, A, "to nobody known"));
        Assert.Equal(NetFrontEnd.Frame(C, A, "to nobody known"), vf2.Receive().Frame);
        Assert.True(vf1.NothingWithin(200));
        // A frame to a MAC learned on the sender's own port is dropped, not reflected.
        vf1.Send(NetFrontEnd.Frame(A, A, "hairpin"));
        Assert.True(vf1.NothingWithin(200));
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.Hairpin) == 1));
    }

    [Fact]
    public void Mergeable_receive_spreads_a_large_frame_over_several_buffers()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        Assert.True(vf2.Mergeable);
        vf2.PostRx(16, size: 256);
        var big = NetFrontEnd.Frame(Bcast, A, new string('x', 1400));
        vf1.Send(big);
        var (numBuffers, frame) = vf2.Receive();
        Assert.Equal((12 + big.Length + 255) / 256, numBuffers);
        Assert.Equal(big, frame);
    }

    [Fact]
    public void Mergeable_receive_buffers_smaller_than_the_addresses_still_get_the_whole_frame()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(16, size: 16); // the header takes 12, so the addresses straddle two buffers
        var frame = NetFrontEnd.Frame(Bcast, A, "tiny buffers");
        vf1.Send(frame);
        var (numBuffers, got) = vf2.Receive();
        Assert.Equal((12 + frame.Length + 15) / 16, numBuffers);
        Assert.Equal(frame, got);
    }

    [Fact]
    public void Without_mergeable_buffers_a_frame_that_does_not_fit_is_dropped_and_the_buffer_kept()
    {
        ulong noMergeable = ~VirtioFeature.Mask(VirtioNet.FMrgRxbuf);
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2), noMergeable);
        vf2.PostRx(1, size: 128);
        vf1.Send(NetFrontEnd.Frame(Bcast, A, new string('y', 500)));
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(2).Device.Counters.Drops(DropReason.RxBufferTooSmall) == 1));
        Assert.Equal(0, vf2.Rx.UsedIndex);
        var small = NetFrontEnd.Frame(Bcast, A, "fits");
        vf1.Send(small);
        var (numBuffers, frame) = vf2.Receive();
        Assert.Equal(1, numBuffers); // VERSION_1 header: num_buffers is 1 without MRG_RXBUF
        Assert.Equal(small, frame);
    }

    [Fact]
    public void No_receive_buffer_counts_a_drop_and_the_next_frame_is_delivered_once_buffers_come()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf1.Send(NetFrontEnd.Frame(Bcast, A, "nowhere to go"));
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(2).Device.Counters.Drops(DropReason.NoRxBuffer) == 1));
        vf2.PostRx(2);
        var f = NetFrontEnd.Frame(Bcast, A, "now there is room");
        vf1.Send(f);
        Assert.Equal(f, vf2.Receive().Frame);
    }

    [Fact]
    public void Offload_requests_that_were_not_negotiated_are_dropped()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1), ~VirtioFeature.Mask(VirtioNet.FCsum));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(2);
        var gso = new byte[12];
        gso[0] = VirtioNet.HdrFlagNeedsCsum;
        vf1.Send(NetFrontEnd.Frame(Bcast, A, "needs csum"), gso);
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.BadHeader) == 1));
        Assert.True(vf2.NothingWithin(200));
    }

    [Fact]
    public void Control_queue_receive_filter_and_mac_set_apply_to_delivery()
    {
        // A trusted VF's own driver may set its MAC and receive modes.
        using var backend = new GroupBackend(vfs: 2, o => o with { TrustVfs = true });
        const string NewMac = "52:54:00:00:00:0b";
        using var vf1 = new NetFrontEnd(backend.Socket(1));
        using var vf2 = new NetFrontEnd(backend.Socket(2), controlQueue: true);
        vf2.PostRx(8);
        var mac = new byte[6];
        Mac.Parse(NewMac).Write(mac);
        Assert.Equal(VirtioNet.Ok, vf2.ControlCommand(VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet, mac));
        Assert.Equal(VirtioNet.Ok, vf2.ControlCommand(VirtioNet.CtrlRx, VirtioNet.CtrlRxPromisc, new byte[] { 0 }));
        Assert.Equal(VirtioNet.Err, vf2.ControlCommand(VirtioNet.CtrlRx, VirtioNet.CtrlRxPromisc, new byte[] { 7 }));
        Assert.Equal(VirtioNet.Err, vf2.ControlCommand(0x77, 0, default));

        vf1.Send(NetFrontEnd.Frame(C, A, "not for vf2"));          // unknown unicast: flooded, filtered by vf2
        Assert.True(EchoBackend.WaitUntil(() => backend.Member(2).Device.Counters.Drops(DropReason.Filtered) == 1));
        var mine = NetFrontEnd.Frame(NewMac, A, "for vf2");
        vf1.Send(mine);
        Assert.Equal(mine, vf2.Receive().Frame);
        Assert.Equal(NewMac, backend.Member(2).Device.Mac.ToString());
        var config = vf2.Session.Connection.GetConfig(0, 6)!;
        Assert.Equal(NewMac, Mac.Read(config).ToString());
    }

    [Fact]
    public void An_untrusted_vfs_own_control_queue_cannot_change_its_mac_or_receive_modes()
    {
        using var vf2 = new NetFrontEnd(_backend.Socket(2), controlQueue: true);
        var mac = new byte[6];
        Mac.Parse(C).Write(mac);
        Assert.False(_backend.Member(2).Device.Trusted);
        Assert.Equal(VirtioNet.Err, vf2.ControlCommand(VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet, mac));
        Assert.Equal(VirtioNet.Err, vf2.ControlCommand(VirtioNet.CtrlRx, VirtioNet.CtrlRxPromisc, new byte[] { 0 }));
        Assert.Equal(B, vf2.Mac);
        Assert.True(_backend.Member(0).Device.Trusted); // the owner is
    }

    [Fact]
    public void Config_space_reports_mac_link_pairs_and_mtu()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        var config = vf1.Session.Connection.GetConfig(0, VirtioNet.ConfigSize)!;
        Assert.Equal("02:56:56:00:00:01", Mac.Read(config).ToString());
        Assert.Equal(VirtioNet.StatusLinkUp, BinaryPrimitives.ReadUInt16LittleEndian(config.AsSpan(6)));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(config.AsSpan(8)));
        Assert.Equal(1500, BinaryPrimitives.ReadUInt16LittleEndian(config.AsSpan(10)));
        Assert.Equal(3UL, vf1.Session.Connection.GetQueueNum()); // rx, tx, control
    }

    [Fact]
    public void Send_rarp_broadcasts_an_announcement_to_the_other_ports()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(2);
        var mac = new byte[8];
        Mac.Parse(A).Write(mac);
        vf1.Session.Connection.Request(FrontendRequest.SendRarp, mac);
        var frame = vf2.Receive().Frame;
        Assert.Equal(Bcast, Mac.Read(frame).ToString());
        Assert.Equal(A, Mac.Read(frame.AsSpan(6)).ToString());
        Assert.Equal(Rarp.EtherType, BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)));
    }

    [Fact]
    public void Learned_entries_age_out_and_unicast_floods_again()
    {
        using var backend = new GroupBackend(vfs: 3, o => o with { MacAgeing = TimeSpan.FromMilliseconds(300) });
        using var vf1 = new NetFrontEnd(backend.Socket(1));
        using var vf2 = new NetFrontEnd(backend.Socket(2));
        using var vf3 = new NetFrontEnd(backend.Socket(3));
        vf1.PostRx(4); vf2.PostRx(4); vf3.PostRx(4);
        vf2.Send(NetFrontEnd.Frame(Bcast, B, "learn me"));
        vf1.Receive(); vf3.Receive();
        vf1.Send(NetFrontEnd.Frame(B, A, "known"));
        vf2.Receive();
        Assert.True(vf3.NothingWithin(100));
        Thread.Sleep(600);
        var again = NetFrontEnd.Frame(B, A, "aged out");
        vf1.Send(again);
        Assert.Equal(again, vf3.Receive().Frame);
    }

    [Fact]
    public void A_member_that_disconnects_stops_receiving_and_others_keep_switching()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var pf = new NetFrontEnd(_backend.Socket(0));
        pf.PostRx(8);
        using (var vf2 = new NetFrontEnd(_backend.Socket(2)))
        {
            vf2.PostRx(4);
            vf1.Send(NetFrontEnd.Frame(Bcast, A, "one"));
            vf2.Receive();
            pf.Receive();
        }
        // The endpoint drops the connection first and stops the rings right after: wait for both.
        var vf2Side = _backend.Member(2).Endpoint;
        Assert.True(EchoBackend.WaitUntil(() => !vf2Side.IsConnected && vf2Side.Backend.Queues.All(q => !q.Started)));
        vf1.Send(NetFrontEnd.Frame(Bcast, A, "two"));
        Assert.Equal(NetFrontEnd.Frame(Bcast, A, "two"), pf.Receive().Frame);
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(2).Device.Counters.Drops(DropReason.NoRxQueue) >= 1));
    }
}
