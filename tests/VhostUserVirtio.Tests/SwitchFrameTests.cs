using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

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
