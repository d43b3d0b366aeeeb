using System.Numerics;
using VhostUserVirtio.Devices.Echo;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// The echo data path in one thread, no sockets: a driver-side ring in <see cref="GuestRam"/> and a
/// device-side ring (<see cref="SplitQueue"/>, or <see cref="PackedQueue"/> with packed) over the same memfd, mapped a second time through
/// <see cref="GuestMemoryTable"/> exactly as the back end maps a front end's memory table.
/// Each chain is one readable buffer followed by one writable buffer of the same size.
///
/// Shared (linked) by the allocation tests and the benchmarks, so it must not use xunit.
/// </summary>
public sealed class InThreadEchoRing : IDisposable
{
    private readonly GuestRam _ram;
    private readonly GuestMemoryTable _table = new();
    private readonly BufferSpec[] _buffers;   // chain i = _buffers[2i] (readable), _buffers[2i+1] (writable)

    /// <param name="chains">Chains per batch; each takes two descriptors, so the queue is sized to fit them.</param>
    public InThreadEchoRing(int chains, int payloadSize, bool eventIdx = true, bool packed = false)
    {
        Chains = chains;
        PayloadSize = payloadSize;
        int queueSize = (int)BitOperations.RoundUpToPowerOf2((uint)(2 * chains));
        ulong ringBytes = 64 << 10;
        _ram = new GuestRam(ringBytes + (ulong)(2 * chains * (payloadSize + 64)) + (1 << 20));
        Driver = packed ? DriverQueue.Packed(_ram, 0, queueSize) : new DriverQueue(_ram, 0, queueSize);
        Driver.EventIdx = eventIdx;

        // The table consumes its descriptors; GuestRam keeps its own, so hand over a duplicate.
        var r = _ram.Regions[0];
        _table.Replace([(r.Gpa, r.Size, r.UserAddress, r.MmapOffset)], [r.Fd.Duplicate()]);
        Device = packed ? new PackedQueue(queueSize) : new SplitQueue(queueSize);
        Device.EventIdx = eventIdx;
        if (Device.Configure(_table.Current, queueSize, Driver.DescriptorTable, Driver.AvailableRing, Driver.UsedRing) is { } error)
            throw new InvalidOperationException(error.Detail);
        if (Device is PackedQueue p && p.SetVringBase(PackedRing.WrapBit) is { } baseError)
            throw new InvalidOperationException(baseError.Detail);

        _buffers = new BufferSpec[2 * chains];
        for (int i = 0; i < chains; i++)
        {
            ulong src = _ram.Allocate((ulong)payloadSize, 64);
            ulong dst = _ram.Allocate((ulong)payloadSize, 64);
            var bytes = _ram.Span(src, payloadSize);
            for (int b = 0; b < bytes.Length; b++)
                bytes[b] = (byte)(i * 31 + b);
            _buffers[2 * i] = new BufferSpec(src, (uint)payloadSize, Writable: false);
            _buffers[2 * i + 1] = new BufferSpec(dst, (uint)payloadSize, Writable: true);
        }
    }

    public int Chains { get; }
    public int PayloadSize { get; }
    public DriverQueue Driver { get; }
    public Virtqueue Device { get; }
    /// <summary>Used-buffer notifications the device side decided to send (counted, not signalled).</summary>
    public long Notifications { get; private set; }

    /// <summary>Driver side: puts the whole batch on the ring.</summary>
    public void Post()
    {
        var buffers = _buffers.AsSpan();
        for (int i = 0; i < Chains; i++)
            Driver.AddChain(buffers.Slice(2 * i, 2));
    }

    /// <summary>
    /// Device side: the same drain loop and echo handler the back end runs (pop, copy readable into
    /// writable, push used, notification suppression with the lost-kick re-check). Returns the
    /// number of chains echoed.
    /// </summary>
    public int DeviceDrain()
    {
        var handler = new EchoDevice.EchoHandler(null);
        int echoed = Device.Drain(ref handler, budget: int.MaxValue).Handled;
        if (Device.Fault != null)
            throw new InvalidOperationException("device side broke the ring: " + Device.Fault);
        if (echoed > 0 && Device.NeedsNotification())
            Notifications++;
        return echoed;
    }

    /// <summary>Driver side: takes back every used element; returns how many, and checks each length.</summary>
    public int Reap()
    {
        int reaped = 0;
        while (Driver.TryGetUsed(out _, out uint length))
        {
            if (length != (uint)PayloadSize)
                throw new InvalidOperationException($"used length {length}, expected {PayloadSize}");
            reaped++;
        }
        return reaped;
    }

    /// <summary>One full round: post, device drain, reap. Returns chains completed (always <see cref="Chains"/>).</summary>
    public int RunBatch()
    {
        Post();
        int echoed = DeviceDrain();
        int reaped = Reap();
        if (echoed != Chains || reaped != Chains)
            throw new InvalidOperationException($"batch of {Chains}: device echoed {echoed}, driver reaped {reaped}");
        return reaped;
    }

    /// <summary>True when every writable buffer holds a copy of its readable buffer.</summary>
    public bool EchoesMatch()
    {
        for (int i = 0; i < Chains; i++)
        {
            var src = _ram.Span(_buffers[2 * i].Address, PayloadSize);
            var dst = _ram.Span(_buffers[2 * i + 1].Address, PayloadSize);
            if (!src.SequenceEqual(dst))
                return false;
        }
        return true;
    }

    /// <summary>Zeroes the writable buffers (so a later <see cref="EchoesMatch"/> proves fresh copies).</summary>
    public void ClearDestinations()
    {
        for (int i = 0; i < Chains; i++)
            _ram.Span(_buffers[2 * i + 1].Address, PayloadSize).Clear();
    }

    public void Dispose()
    {
        // Device mapping first: nothing may touch the rings once either side's memory is gone.
        _table.Dispose();
        Driver.Dispose();
        _ram.Dispose();
    }
}
