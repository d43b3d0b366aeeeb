using System.Buffers.Binary;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;

using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The split ring in bursts: the driver's avail index is read again only when the chains already
/// seen are used up, and the used index is published once per burst, after every element of it is
/// written, and before the notification decision. Both are what keeps the cache lines the driver
/// writes and polls from moving between cores per packet; neither may lose or expose a buffer early.
/// </summary>
[Trait("tier", "unit")]
public sealed class RingBurstTests : IDisposable
{
    private const int Size = SplitRingImage.Size;
    private const ulong Desc = SplitRingImage.Desc, Avail = SplitRingImage.Avail, Used = SplitRingImage.Used, Buffers = SplitRingImage.Buffers;
    private readonly SplitRingImage _ring = new("burst");
    private readonly SplitQueue _queue = new(Size);

    public RingBurstTests()
    {
        Assert.Null(_queue.Configure(_ring.Memory, Size, Desc, Avail, Used));
    }

    public void Dispose() => _ring.Dispose();


    private struct Handler(RingBurstTests test, Action<int>? during) : IChainHandler
    {
        public int Calls;
        public List<ushort> UsedSeen = new();

        public uint Handle(DescriptorChain chain)
        {
            UsedSeen.Add(test._ring.UsedIndex);
            during?.Invoke(Calls++);
            return 8;
        }
    }

    [Fact]
    public void A_burst_publishes_the_used_index_once_after_every_element_is_written()
    {
        for (ushort h = 0; h < 8; h++)
            _ring.Offer(h);
        var handler = new Handler(this, null);
        var result = _queue.Drain(ref handler);

        Assert.Equal(8, result.Handled);
        // While the burst ran, the driver saw no used element yet; after it, all eight at once.
        Assert.All(handler.UsedSeen, seen => Assert.Equal(0, seen));
        Assert.Equal(8, _ring.UsedIndex);
        for (int i = 0; i < 8; i++)
            Assert.Equal((uint)i, BinaryPrimitives.ReadUInt32LittleEndian(Read(Used + 4 + 8UL * (uint)i, 4)));
    }

    [Fact]
    public void Buffers_the_driver_adds_during_a_burst_are_taken_once_the_ones_seen_are_used_up()
    {
        _ring.Offer(0);
        _ring.Offer(1);
        // While the first chain is handled, the driver adds two more: the cached index says 2, so the
        // ring must look again when those two are done, not stop there.
        var handler = new Handler(this, call =>
        {
            if (call == 0)
            {
                _ring.Offer(2);
                _ring.Offer(3);
            }
        });
        var result = _queue.Drain(ref handler);
        Assert.Equal(4, result.Handled);
        Assert.Equal(4, _ring.UsedIndex);
        Assert.Equal(4, _queue.NextAvail);
        Assert.False(_queue.HasPending);
    }

    [Fact]
    public void An_avail_index_that_jumps_past_the_queue_size_still_breaks_the_ring_when_it_is_read_again()
    {
        _ring.Offer(0);
        var handler = new Handler(this, _ => _ring.WriteU16(Avail + 2, (ushort)(_ring.AvailIndex + Size + 1)));
        _queue.Drain(ref handler);
        Assert.Equal(1, handler.Calls);
        Assert.Equal(RingErrorKind.AvailIndexOutOfRange, _queue.Fault?.Kind);
        Assert.Equal(1, _ring.UsedIndex); // what was handled is still given back
    }

    [Fact]
    public void Rewound_chains_are_popped_again_from_the_index_already_seen()
    {
        _ring.Offer(0);
        _ring.Offer(1);
        Assert.NotNull(_queue.Pop());
        Assert.NotNull(_queue.Pop());
        _queue.Rewind(2);
        Assert.True(_queue.HasPending);
        Assert.Equal(0, _queue.Pop()!.Head);
        Assert.Equal(1, _queue.Pop()!.Head);
        Assert.Null(_queue.Pop());
        // Pushed without publishing: the driver sees nothing until the publish (or the notification decision).
        _queue.PushUsed(0, 8, publish: false);
        _queue.PushUsed(1, 8, publish: false);
        Assert.Equal(0, _ring.UsedIndex);
        _queue.NeedsNotification();
        Assert.Equal(2, _ring.UsedIndex);
    }

    private byte[] Read(ulong gpa, int length)
    {
        var b = new byte[length];
        Assert.True(_ring.Memory.Read(gpa, b));
        return b;
    }
}
