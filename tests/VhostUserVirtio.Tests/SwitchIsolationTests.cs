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

/// <summary>The switch at the unit level: frames over descriptor chains in memory the test controls.</summary>
[Trait("tier", "unit")]
public sealed class SwitchFrameTests : IDisposable
{
    private static readonly Mac Sender = Mac.Parse("02:00:00:00:00:01"), Victim = Mac.Parse("02:00:00:00:00:02"), Attacker = Mac.Parse("02:00:00:00:00:03");
    private const int QueueSize = 1024;
    private readonly GuestRam _ram = new(8 << 20);
    private readonly Memory.GuestMemoryTable _table = new();
    private readonly DriverQueue _driver;
    private readonly Queue.SplitQueue _device = new(QueueSize);

    public SwitchFrameTests()
    {
        var r = _ram.Regions[0];
        _table.Replace([(r.Gpa, r.Size, r.UserAddress, r.MmapOffset)], [r.Fd.Duplicate()]);
        _driver = new DriverQueue(_ram, 0, QueueSize);
        Assert.Null(_device.Configure(_table.Current, QueueSize, _driver.DescriptorTable, _driver.AvailableRing, _driver.UsedRing));
    }

    public void Dispose()
    {
        _driver.Dispose();
        _table.Dispose();
        _ram.Dispose();
    }

    /// <summary>A port that records what it receives; <see cref="BeforeCopy"/> runs between the switch's decision and the copy.</summary>
    private sealed class RecordingPort(string name) : ISwitchPort
    {
        public string Name => name;
        public PortCounters Counters { get; } = new();
        public List<byte[]> Received { get; } = [];
        public Action? BeforeCopy { get; set; }

        public bool Deliver(in Frame frame, Mac destination, out DropReason reason)
        {
            BeforeCopy?.Invoke();
            var copy = new byte[frame.Length];
            frame.CopyTo(copy);
            Received.Add(copy);
            reason = default;
            return true;
        }

        public void FlushNotifications() { }
    }

    private static byte[] Ethernet(Mac dst, Mac src, int length = 60)
    {
        var f = new byte[length];
        dst.Write(f);
        src.Write(f.AsSpan(6));
        f[12] = 0x88;
        f[13] = 0xb5;
        for (int i = 14; i < length; i++)
            f[i] = (byte)i;
        return f;
    }

    [Fact]
    public void The_receiver_gets_the_addresses_the_switch_decided_on_even_if_the_sender_rewrites_them_before_the_copy()
    {
        var sw = new L2Switch(Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var sender = new RecordingPort("sender");
        var victim = new RecordingPort("victim");
        var attacker = new RecordingPort("attacker");
        sw.Attach(sender); sw.Attach(victim); sw.Attach(attacker);
        sw.Forward(victim, new Frame(Ethernet(Mac.Broadcast, Victim)));
        sw.Forward(attacker, new Frame(Ethernet(Mac.Broadcast, Attacker)));
        victim.Received.Clear();

        // The sender's frame, unicast to the victim, in guest memory the sender can still write.
        var original = Ethernet(Victim, Sender, 100);
        ulong a = _ram.Allocate(100, 64);
        original.CopyTo(_ram.Span(a, 100));
        _driver.AddChain(new BufferSpec[] { new(a, 100, false) });
        var chain = _device.Pop()!;
        victim.BeforeCopy = () =>
        {
            Attacker.Write(_ram.Span(a, 6));
            Attacker.Write(_ram.Span(a + 6, 6));
        };

        sw.Forward(sender, new Frame(chain, 0));

        var got = Assert.Single(victim.Received);
        Assert.Equal(Victim, Mac.Read(got));
        Assert.Equal(Sender, Mac.Read(got.AsSpan(6)));
        Assert.Equal(original.AsSpan(12).ToArray(), got.AsSpan(12).ToArray());
        Assert.Empty(attacker.Received.Skip(1)); // only the victim's own broadcast reached the attacker
    }

    [Fact]
    public void A_frame_is_refused_unless_its_length_fits_and_a_chain_over_2_GiB_never_becomes_a_negative_length()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = new Frame(new byte[Frame.MinLength - 1]); });
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = new Frame(new byte[Frame.MaxLength + 1]); });
        Assert.Equal(Frame.MaxLength, new Frame(new byte[Frame.MaxLength]).Length);

        const uint region = 4 << 20;
        ulong a = _ram.Allocate(region, 4096);
        _driver.AddChain(Enumerable.Repeat(new BufferSpec(a, region, false), 600).ToArray());
        var huge = _device.Pop()!;
        Assert.Equal(600UL * region, huge.ReadableLength);
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = new Frame(huge, 12); });

        ulong b = _ram.Allocate(100, 64);
        _driver.AddChain(new BufferSpec[] { new(b, 100, false) });
        var small = _device.Pop()!;
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = new Frame(small, 90); });  // 10 bytes: a runt
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = new Frame(small, 200); }); // past the end
        Assert.Equal(88, new Frame(small, 12).Length);
    }

    [Fact]
    public void Copies_in_small_pieces_still_take_the_addresses_from_the_frames_copy()
    {
        var original = Ethernet(Victim, Sender, 64);
        ulong a = _ram.Allocate(64, 64);
        original.CopyTo(_ram.Span(a, 64));
        _driver.AddChain(new BufferSpec[] { new(a, 5, false), new(a + 5, 59, false) });
        var frame = new Frame(_device.Pop()!, 0);
        Attacker.Write(_ram.Span(a, 6));
        var reader = frame.OpenReader();
        var got = new byte[64];
        int n = 0;
        foreach (int piece in new[] { 1, 4, 3, 7, 49 })
            n += reader.Read(got.AsSpan(n, piece));
        Assert.Equal(64, n);
        Assert.Equal(original, got);
    }
}

/// <summary>The switch's per-port learning limit and the bookkeeping behind it.</summary>
[Trait("tier", "unit")]
public sealed class MacLearningTests
{
    private sealed class Port(string name) : ISwitchPort
    {
        public string Name => name;
        public PortCounters Counters { get; } = new();
        public int Received { get; set; }

        public bool Deliver(in Frame frame, Mac destination, out DropReason reason)
        {
            Received++;
            reason = default;
            return true;
        }

        public void FlushNotifications() { }
    }

    private static Frame Eth(Mac dst, Mac src)
    {
        var f = new byte[60];
        dst.Write(f);
        src.Write(f.AsSpan(6));
        return new Frame(f);
    }

    private static Mac MacOf(int port, int n) => new(0x02_00_00_00_00_00UL + ((ulong)port << 16) + (ulong)n);

    [Fact]
    public void Learned_counts_follow_learning_moves_age_out_and_detach_and_a_full_port_learns_after_a_sweep()
    {
        var sw = new L2Switch(Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, ageing: TimeSpan.FromMilliseconds(200), maxMacsPerPort: 4);
        var a = new Port("a");
        var b = new Port("b");
        var c = new Port("c");
        sw.Attach(a); sw.Attach(b); sw.Attach(c);

        for (int i = 1; i <= 6; i++)
            sw.Forward(a, Eth(Mac.Broadcast, MacOf(1, i)));
        Assert.Equal((4, 2L), (a.Counters.LearnedMacs, a.Counters.MacsNotLearned));

        // A refused source is not known: frames to it are flooded; a learned one goes to its port only.
        (b.Received, c.Received) = (0, 0);
        sw.Forward(c, Eth(MacOf(1, 6), MacOf(3, 1)));
        Assert.Equal(1, b.Received);
        sw.Forward(c, Eth(MacOf(1, 1), MacOf(3, 1)));
        Assert.Equal(1, b.Received);

        // A MAC that moves leaves its old port's share and joins the new one's.
        sw.Forward(b, Eth(Mac.Broadcast, MacOf(1, 1)));
        Assert.Equal((3, 1), (a.Counters.LearnedMacs, b.Counters.LearnedMacs));

        // An unplugged port's entries go before the next lookup.
        sw.Detach(b);
        sw.Forward(c, Eth(MacOf(1, 1), MacOf(3, 1)));
        Assert.Equal(0, b.Counters.LearnedMacs);
        Assert.Equal(1, c.Counters.LearnedMacs);
        Assert.DoesNotContain(sw.Snapshot(), e => e.Port == "b");

        // At its limit, a port learns again once its entries aged and a sweep (at most one per interval) removed them.
        sw.Forward(a, Eth(Mac.Broadcast, MacOf(1, 7)));
        Assert.Equal(4, a.Counters.LearnedMacs);
        Thread.Sleep(300);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        int n = 100;
        while (a.Counters.LearnedMacs == 4 && DateTime.UtcNow < deadline)
        {
            sw.Forward(a, Eth(Mac.Broadcast, MacOf(1, n++)));
            Thread.Sleep(20);
        }
        Assert.Equal(1, a.Counters.LearnedMacs);
        Assert.Single(sw.Snapshot(), e => e.Port == "a");
    }

    [Fact]
    public void Sources_over_the_limit_are_counted_and_logged_without_allocating_per_frame()
    {
        var logs = new CapturingLoggerProvider();
        var sw = new L2Switch(logs.CreateLogger("switch"), maxMacsPerPort: 4);
        var a = new Port("a");
        var b = new Port("b");
        sw.Attach(a); sw.Attach(b);
        var f = new byte[60];
        Mac.Broadcast.Write(f);
        for (int i = 0; i < 100; i++) // warm-up: JIT, the first (logged) refusals
        {
            MacOf(1, i).Write(f.AsSpan(6));
            sw.Forward(a, new Frame(f));
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 100; i < 10_100; i++)
        {
            MacOf(1, i).Write(f.AsSpan(6));
            sw.Forward(a, new Frame(f));
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.True(allocated < 1024, $"{allocated} bytes allocated over 10000 refused sources");
        Assert.Equal((4, 10_096L), (a.Counters.LearnedMacs, a.Counters.MacsNotLearned));
        Assert.Equal(10_100, b.Received);
        Assert.True(logs.HasWarning("a is at its limit of 4 learned MACs"));
        Assert.True(logs.Lines.Count(l => l.Level == Microsoft.Extensions.Logging.LogLevel.Warning) <= 10, logs.Dump());
    }
}
