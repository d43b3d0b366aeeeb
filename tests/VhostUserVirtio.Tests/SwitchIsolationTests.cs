using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// One member cannot cross another through the switch: it cannot exhaust the MAC table, steal
/// another member's MAC, change addresses after the switch decided, or overflow a frame's length.
/// </summary>
[Trait("tier", "unit")]
public sealed class SwitchIsolationTests : IDisposable
{
    private const string Vf1 = "02:56:56:00:00:01", Vf2 = "02:56:56:00:00:02", Vf3 = "02:56:56:00:00:03", Bcast = "ff:ff:ff:ff:ff:ff";
    private readonly GroupBackend _backend = new(vfs: 3);

    public void Dispose() => _backend.Dispose();

    [Fact]
    public void A_port_sending_thousands_of_random_source_macs_cannot_stop_another_ports_mac_from_being_learned()
    {
        // The owner is trusted (no spoof check), so only the learning limit stands in its way.
        using var pf = new NetFrontEnd(_backend.Socket(0));
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));

        // Its first source is learned on its own port; every later frame goes there and is dropped
        // as a hairpin, so the flood itself reaches nobody.
        const string home = "52:54:00:00:ee:00";
        pf.Send(NetFrontEnd.Frame(home, home, "home"));
        var random = new Random(9);
        var frames = new List<byte[]>();
        for (int i = 0; i < 9000; i++)
        {
            var mac = new byte[6];
            random.NextBytes(mac);
            mac[0] = (byte)((mac[0] & 0xfe) | 0x02); // locally administered unicast
            frames.Add(NetFrontEnd.Frame(home, Mac.Read(mac).ToString(), "flood"));
        }
        pf.SendAll(frames);

        pf.PostRx(8); vf1.PostRx(8); vf2.PostRx(8);
        var hello = NetFrontEnd.Frame(Bcast, Vf2, "learn me");
        vf2.Send(hello);
        Assert.Equal(hello, vf1.Receive().Frame);
        Assert.Equal(hello, pf.Receive().Frame);

        ushort pfReceived = pf.Rx.UsedIndex;
        var unicast = NetFrontEnd.Frame(Vf2, Vf1, "for vf2 only");
        vf1.Send(unicast);
        Assert.Equal(unicast, vf2.Receive().Frame);
        Thread.Sleep(300);
        Assert.True(pf.Rx.UsedIndex == pfReceived, "unicast to a member was flooded to the port that filled the table");

        int limit = _backend.Group.Options.MaxMacsPerPort;
        var status = _backend.Group.Status();
        Assert.Contains(status.MacTable, e => e.Mac == Vf2 && e.Port == "vf2");
        Assert.Equal(limit, status.MacTable.Count(e => e.Port == "pf"));
        var attacker = _backend.Member(0).Device.Counters;
        Assert.Equal(limit, attacker.LearnedMacs);
        Assert.True(attacker.MacsNotLearned >= 9000 - limit, $"{attacker.MacsNotLearned} sources refused");
        Assert.Equal(attacker.MacsNotLearned, status.Ports.Single(p => p.Name == "pf").Counters.MacsNotLearned);
        Assert.True(_backend.Logs.WaitForWarning($"pf is at its limit of {limit} learned MACs"));
    }

    [Fact]
    public void A_vf_sending_with_another_vfs_source_mac_is_dropped_and_does_not_receive_its_traffic_until_the_owner_trusts_it()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        using var vf3 = new NetFrontEnd(_backend.Socket(3));
        vf1.PostRx(8); vf2.PostRx(8); vf3.PostRx(8);

        var hello = NetFrontEnd.Frame(Bcast, Vf2, "vf2 is here");
        vf2.Send(hello);
        vf1.Receive(); vf3.Receive();

        // VF1 claims VF2's MAC: nobody hears it, and VF2's traffic still goes to VF2.
        vf1.Send(NetFrontEnd.Frame(Bcast, Vf2, "vf1 pretending"));
        var toVictim = NetFrontEnd.Frame(Vf2, Vf3, "for vf2");
        vf3.Send(toVictim);
        Assert.Equal(toVictim, vf2.Receive().Frame);
        Assert.True(vf1.NothingWithin(300), "the spoofing VF received the victim's traffic");
        Assert.True(vf3.NothingWithin(100), "the spoofed frame was forwarded");
        Assert.Contains(_backend.Group.Status().MacTable, e => e.Mac == Vf2 && e.Port == "vf2");
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.SpoofedSource) == 1));
        Assert.Equal(0, _backend.Member(1).Device.Counters.TxPackets);
        Assert.True(_backend.Logs.WaitForWarning("spoof"));

        // The owner trusts VF1: its frames with other source MACs are forwarded.
        using (var owner = OwnerDriver.Connect(_backend.Socket(0)))
        {
            owner.UseAllCommands();
            Assert.True(owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, (ushort)AdminGroupType.SrIov, 1,
                [NetMemberControl.TrustClass, 0, 0, 0, 0, 0, 0, 0, 1], 0).Ok);
        }
        var bridged = NetFrontEnd.Frame(Bcast, "52:54:00:00:00:77", "from a guest bridge");
        vf1.Send(bridged);
        Assert.Equal(bridged, vf3.Receive().Frame);
        Assert.Equal(bridged, vf2.Receive().Frame);
    }

    [Fact]
    public void A_rarp_announcement_for_another_vfs_mac_is_dropped_from_an_untrusted_vf()
    {
        using var vf1 = new NetFrontEnd(_backend.Socket(1));
        using var vf2 = new NetFrontEnd(_backend.Socket(2));
        vf2.PostRx(4);
        var mac = new byte[8];
        Mac.Parse(Vf2).Write(mac);
        vf1.Session.Connection.Request(FrontendRequest.SendRarp, mac);
        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.SpoofedSource) == 1));
        Assert.True(vf2.NothingWithin(200));
        Mac.Parse(Vf1).Write(mac);
        vf1.Session.Connection.Request(FrontendRequest.SendRarp, mac);
        Assert.Equal(Vf1, Mac.Read(vf2.Receive().Frame.AsSpan(6)).ToString());
    }

    [Fact]
    public void A_transmit_chain_over_2_GiB_made_of_one_reused_buffer_is_dropped_as_oversize_and_the_receiver_is_untouched()
    {
        using var sender = FrontEndSession.Start(_backend.Socket(1), new FrontEndSession.Options { QueueSize = 1024, RamSize = 16 << 20 });
        using var receiver = new NetFrontEnd(_backend.Socket(2));

        // The receiver's buffers, filled with a pattern that must survive.
        var rxBuffers = new List<ulong>();
        for (int i = 0; i < 8; i++)
        {
            ulong a = receiver.Session.Ram.Allocate(2048, 64);
            receiver.Session.Ram.Span(a, 2048).Fill(0x5a);
            receiver.Rx.AddChain(new BufferSpec[] { new(a, 2048, true) });
            rxBuffers.Add(a);
        }
        receiver.Rx.Notify();

        // 600 descriptors over the same 4 MiB: 2.4 GiB readable, a negative int if taken as one.
        const uint region = 4 << 20;
        ulong buffer = sender.Ram.Allocate(region, 4096);
        var start = sender.Ram.Span(buffer, 64);
        start.Clear();
        Mac.Broadcast.Write(start[NetFrontEnd.HeaderSize..]);
        Mac.Parse(Vf1).Write(start[(NetFrontEnd.HeaderSize + 6)..]);
        var chain = Enumerable.Repeat(new BufferSpec(buffer, region, false), 600).ToArray();
        sender.Queues[1].AddChain(chain);
        sender.Queues[1].Notify();
        sender.Queues[1].WaitUsed();

        Assert.True(EchoBackend.WaitUntil(() => _backend.Member(1).Device.Counters.Drops(DropReason.Oversize) == 1));
        Assert.True(receiver.NothingWithin(200));
        foreach (ulong a in rxBuffers)
            Assert.True(receiver.Session.Ram.Span(a, 2048).IndexOfAnyExcept((byte)0x5a) < 0, "a receive buffer was written");
        Assert.Equal(0, _backend.Member(2).Device.Counters.RxPackets);
        Assert.Null(_backend.Member(1).Endpoint.Backend.Queues[1].Ring.Fault);
    }
}
