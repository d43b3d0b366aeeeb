using System.Buffers;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Group;
using VhostUserVirtio.Group.Migration;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Capture reads ring positions only when they are implicit: every buffer the member took has been
/// used (next avail = used index), as VIRTIO 1.4 requires of a stopped device. A broken ring is
/// carried as DEVICE_NEEDS_RESET.
/// </summary>
[Trait("tier", "unit")]
public sealed class MemberStateCaptureTests : IDisposable
{
    private const ulong MemSize = 0x10000, Desc = 0x1000, Avail = 0x2000, Used = 0x3000, Buffer = 0x8000;
    private readonly Memory.GuestMemoryTable _table = new();
    private readonly NetDevice _net;
    private readonly Backend.DeviceQueue[] _queues;

    public MemberStateCaptureTests()
    {
        _table.Replace([(0UL, MemSize, 0x10_0000_0000UL, 0UL)], [Interop.MemFd.Create("capture", (long)MemSize)]);
        var log = Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        _net = new NetDevice("vf1", new NetDeviceOptions { Mac = Mac.Parse("02:56:56:00:00:01"), ControlQueue = false },
            new L2Switch(log), _ => { }, log);
        _queues = [.. Enumerable.Range(0, _net.QueueCount).Select(i => new Backend.DeviceQueue(_net, i, log, new Backend.Diagnostics.LogRateLimit()))];
        var memory = _table.Current;
        // Transmit ring 1 of 16 entries with one chain (one readable buffer) made available.
        Span<byte> descriptor = stackalloc byte[16];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(descriptor, Buffer);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(descriptor[8..], 64);
        Assert.True(memory.Write(Desc, descriptor));
        Assert.True(memory.Write(Avail, [0, 0, 1, 0, 0, 0]));
        Assert.Null(_queues[1].Ring.Configure(memory, 16, Desc, Avail, Used));
    }

    public void Dispose() => _table.Dispose();

    private DeviceStateError? Capture(out NetMemberState? state) =>
        NetMemberMigration.Capture(_net, _queues, TransportRegisters.WithoutVectors(0x0f), new MemberVectors(null, 0), out state);

    [Fact]
    public void A_ring_with_a_buffer_taken_but_not_used_refuses_the_capture_until_it_is_used()
    {
        var ring = _queues[1].Ring;
        Assert.NotNull(ring.Pop());
        Assert.Equal(DeviceStateErrorKind.InFlight, Capture(out var state)?.Kind);
        Assert.Null(state);

        ring.PushUsed(0, 0);
        Assert.Null(Capture(out state));
        Assert.Equal(new VirtqueueState(16, DeviceParts.NoVector, false, Desc, Avail, Used), state!.Queues[1]);
        Assert.Equal(VirtqueueState.Unused, state.Queues[0]);
        Assert.Null(RingResume.NextAvail(_table.Current, state.Queues[1], out ushort next));
        Assert.Equal(1, next);
    }

    [Fact]
    public void A_broken_ring_is_captured_as_device_needs_reset()
    {
        _queues[1].Ring.Break(Queue.RingErrorKind.HeadOutOfRange, "test");
        Assert.Null(Capture(out var state));
        Assert.Equal(0x0f | 0x40, state!.Status);
    }
}
