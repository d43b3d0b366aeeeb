using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Descriptor chains no honest driver builds. Each must break only the queue it was put on: logged,
/// error descriptor signalled, nothing read or written outside guest memory, the process and every
/// other queue and device unaffected.
/// </summary>
[Trait("tier", "unit")]
public sealed class HostileChainTests : IDisposable
{
    private const ushort Next = SplitRing.DescNext;
    private const ushort Write = SplitRing.DescWrite;
    private const ushort Indirect = SplitRing.DescIndirect;

    private readonly EchoBackend _backend = new(devices: 2);
    private readonly FrontEndSession _victim;
    private readonly FrontEndSession _other;
    private readonly DriverQueue _q;
    private readonly ulong _buf;

    public HostileChainTests()
    {
        _other = FrontEndSession.Start(_backend.SocketPath(1));
        _victim = FrontEndSession.Start(_backend.SocketPath(0), new FrontEndSession.Options { QueueSize = 8 });
        _q = _victim.Queues[0];
        _buf = _victim.Ram.Allocate(4096);
    }

    public void Dispose()
    {
        _victim.Dispose();
        _other.Dispose();
        _backend.Dispose();
    }

    private void Submit(ushort head)
    {
        _q.PublishHead(head);
        _q.Notify();
    }

    [Fact]
    public void Descriptor_loop_breaks_only_that_queue()
    {
        _q.WriteDescriptor(0, _buf, 64, Next, 1);
        _q.WriteDescriptor(1, _buf + 64, 64, Next, 0);
        Submit(0);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.ChainTooLong, "loop", _other);
    }

    [Fact]
    public void Chain_longer_than_the_queue_breaks_only_that_queue()
    {
        // Eight descriptors fill the table; the last points back to the first: nine or more links.
        for (ushort i = 0; i < 8; i++)
            _q.WriteDescriptor(i, _buf + i * 16u, 16, Next, (ushort)((i + 1) % 8));
        Submit(0);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.ChainTooLong, "longer than the queue size", _other);
    }

    [Fact]
    public void Buffer_outside_every_region_breaks_only_that_queue()
    {
        _q.WriteDescriptor(0, _buf, 64, Next, 1);
        _q.WriteDescriptor(1, 0xdead_0000_0000, 64, Write, 0);
        Submit(0);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.BufferOutsideMemory, "outside guest memory", _other);
    }

    [Fact]
    public void Buffer_running_past_the_end_of_memory_breaks_only_that_queue()
    {
        var region = _victim.Ram.Regions[0];
        _q.WriteDescriptor(0, region.Gpa + region.Size - 16, 64, 0, 0);
        Submit(0);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.BufferOutsideMemory, "outside guest memory", _other);
    }

    [Fact]
    public void Indirect_table_inside_an_indirect_table_breaks_only_that_queue()
    {
        ulong inner = _victim.Ram.Allocate(32);
        ulong outer = _victim.Ram.Allocate(32);
        _q.WriteDescriptorAt(inner, _buf, 64, 0, 0);
        _q.WriteDescriptorAt(outer, inner, 16, Indirect, 0);
        _q.WriteDescriptor(0, outer, 16, Indirect, 0);
        Submit(0);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.NestedIndirect, "indirect descriptor inside an indirect table", _other);
    }

    [Fact]
    public void Indirect_table_of_bad_length_breaks_only_that_queue()
    {
        ulong table = _victim.Ram.Allocate(64);
        _q.WriteDescriptorAt(table, _buf, 64, 0, 0);
        _q.WriteDescriptor(0, table, 20, Indirect, 0);
        Submit(0);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.IndirectTableLength, "not a non-zero multiple of 16", _other);
    }

    [Fact]
    public void Indirect_table_outside_memory_breaks_only_that_queue()
    {
        _q.WriteDescriptor(0, 0x7777_0000_0000, 64, Indirect, 0);
        Submit(0);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.IndirectTableOutsideMemory, "not inside one mapped region", _other);
    }

    [Fact]
    public void Loop_inside_an_indirect_table_breaks_only_that_queue()
    {
        ulong table = _victim.Ram.Allocate(32);
        _q.WriteDescriptorAt(table, _buf, 16, Next, 1);
        _q.WriteDescriptorAt(table + 16, _buf, 16, Next, 0);
        _q.WriteDescriptor(0, table, 32, Indirect, 0);
        Submit(0);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.ChainTooLong, "indirect chain longer than its table", _other);
    }

    [Fact]
    public void Readable_descriptor_after_a_writable_one_breaks_only_that_queue()
    {
        _q.WriteDescriptor(0, _buf, 64, Next | Write, 1);
        _q.WriteDescriptor(1, _buf + 64, 64, 0, 0);
        Submit(0);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.ReadableAfterWritable, "readable descriptor after a writable one", _other);
    }

    [Fact]
    public void Head_index_beyond_the_queue_breaks_only_that_queue()
    {
        Submit(200);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.HeadOutOfRange, "is not below the queue size", _other);
    }

    [Fact]
    public void Next_index_beyond_the_queue_breaks_only_that_queue()
    {
        _q.WriteDescriptor(0, _buf, 64, Next, 99);
        Submit(0);
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.NextOutOfRange, "next index 99", _other);
    }

    [Fact]
    public void Avail_index_jumping_past_the_queue_size_breaks_only_that_queue()
    {
        _q.SetAvailIndex(100);
        _q.Notify();
        Hostile.AssertOnlyThatQueueBroke(_backend, _victim, 0, RingErrorKind.AvailIndexOutOfRange, "more than the queue size", _other);
    }

    [Fact]
    public void A_broken_queue_stays_broken_and_a_new_connection_heals_the_device()
    {
        _q.WriteDescriptor(0, _buf, 64, Next, 0); // self loop
        Submit(0);
        Assert.True(_victim.ErrorFds[0].Wait(10_000));
        // Good chains after the fault are not processed on the broken ring.
        var src = _victim.Ram.Allocate(8);
        var dst = _victim.Ram.Allocate(8);
        _q.AddChain(new BufferSpec[] { new(src, 8, false), new(dst, 8, true) });
        _q.Notify();
        Thread.Sleep(200);
        Assert.Equal(0, _q.UsedIndex);

        _victim.Dispose();
        Echo.AssertDeviceWorks(_backend.SocketPath(0));
    }
}
