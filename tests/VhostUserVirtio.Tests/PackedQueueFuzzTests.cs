using System.Buffers.Binary;
using CsCheck;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Property test of the packed ring's device side over random rings (descriptors with any flags,
/// ids, addresses and lengths; random indirect tables; any starting slot and wrap counter): popping
/// terminates and never throws, every chain it yields obeys the rules (buffers inside memory,
/// readable before writable, no longer than the ring, ids below the ring size), and a ring that did not break has nothing left in flight once every
/// chain is returned.
/// </summary>
[Trait("tier", "unit")]
public sealed class PackedQueueFuzzTests
{
    private const int QueueSize = 16;
    private const ulong MemSize = 0x10000;
    private const ulong Desc = 0x1000, DriverArea = 0x2000, DeviceArea = 0x2100, Tables = 0x4000, Buffers = 0x8000;

    private sealed record Input(byte[] Ring, byte[] IndirectArea, ushort Base, bool Indirect, bool EventIdx, ushort DriverFlags);

    private static readonly Gen<ulong> Address = Gen.Frequency(
        (6, Gen.ULong[Buffers, MemSize - 1]),
        (3, Gen.Int[0, 15].Select(i => Tables + (ulong)i * 64)),
        (1, Gen.ULong[MemSize - 64, MemSize + 64]),
        (1, Gen.ULong));

    // Flags: NEXT/WRITE/INDIRECT in any mix, the two wrap bits in any mix.
    private static readonly Gen<ushort> Flags = Gen.Select(Gen.UShort[0, 7], Gen.Bool, Gen.Bool,
        (low, avail, used) => (ushort)(low | (avail ? PackedRing.DescAvail : 0) | (used ? PackedRing.DescUsed : 0)));

    private static readonly Gen<byte[]> Descriptor = Gen.Select(Address, Gen.Frequency((4, Gen.UInt[0, 0x2000]), (1, Gen.UInt)),
        Gen.Frequency((5, Gen.UShort[0, QueueSize - 1]), (1, Gen.UShort)), Flags, (addr, len, id, flags) =>
        {
            var d = new byte[16];
            BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
            BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(8), len % 3 == 0 ? len & ~15u : len); // often table-shaped lengths
            BinaryPrimitives.WriteUInt16LittleEndian(d.AsSpan(12), id);
            BinaryPrimitives.WriteUInt16LittleEndian(d.AsSpan(14), flags);
            return d;
        });

    private static readonly Gen<Input> Inputs = Gen.Select(
        Descriptor.Array[QueueSize].Select(ds => ds.SelectMany(d => d).ToArray()),
        Descriptor.Array[64].Select(ds => ds.SelectMany(d => d).ToArray()),
        Gen.Select(Gen.UShort[0, QueueSize - 1], Gen.Bool, (slot, wrap) => PackedRing.Pack(slot, wrap)),
        Gen.Bool, Gen.Bool, Gen.UShort[0, 3],
        (ring, ind, b, indirect, eventIdx, driverFlags) => new Input(ring, ind, b, indirect, eventIdx, driverFlags));

    [Fact]
    public void Random_packed_rings_never_escape_memory_or_crash_the_walker()
    {
        using var table = new GuestMemoryTable();
        table.Replace(new[] { (0UL, MemSize, 0x10_0000_0000UL, 0UL) }, new[] { MemFd.Create("packed-fuzz", (long)MemSize) });
        var memory = table.Current;
        var queue = new PackedQueue(QueueSize);
        var scratch = new byte[0x4000];

        Inputs.Sample(input =>
        {
            Assert.True(memory.Write(0, new byte[MemSize]));
            Assert.True(memory.Write(Desc, input.Ring));
            Assert.True(memory.Write(Tables, input.IndirectArea));
            var area = new byte[4];
            BinaryPrimitives.WriteUInt16LittleEndian(area.AsSpan(2), input.DriverFlags);
            Assert.True(memory.Write(DriverArea, area));

            queue.Reset();
            queue.IndirectAllowed = input.Indirect;
            queue.EventIdx = input.EventIdx;
            Assert.Null(queue.Configure(memory, new RingPlacement(QueueSize, Desc, DriverArea, DeviceArea)));
            Assert.Null(queue.SetVringBase(input.Base));

            // Hold back every other chain for a while, so used entries go out of order and in bursts.
            var held = new Stack<(ushort Head, uint Length)>();
            for (int round = 0; round < 3 * QueueSize; round++)
            {
                var chain = queue.Pop();
                if (chain == null)
                    break;
                Assert.True(chain.Head < QueueSize, "head");
                Assert.True(chain.ReadableCount + chain.WritableCount <= QueueSize, "count");
                foreach (var seg in chain.Readable)
                    Assert.True(!seg.Writable && memory.IsRangeMapped(seg.Address, seg.Length), $"readable {seg}");
                foreach (var seg in chain.Writable)
                    Assert.True(seg.Writable && memory.IsRangeMapped(seg.Address, seg.Length), $"writable {seg}");
                var reader = chain.Reader();
                var writer = chain.Writer();
                reader.Read(scratch);
                writer.Write(scratch.AsSpan(0, (int)Math.Min(chain.WritableLength, (uint)scratch.Length)));
                held.Push((chain.Head, writer.Written));
                if (round % 2 == 1)
                {
                    while (held.Count > 0)
                    {
                        var (head, length) = held.Pop();
                        queue.PushUsed(head, length, publish: false);
                    }
                    queue.NeedsNotification();
                }
            }
            while (held.Count > 0)
            {
                var (head, length) = held.Pop();
                queue.PushUsed(head, length, publish: false);
            }
            queue.PublishUsed();
            queue.EnableNotification();
            Assert.True(queue.Fault != null || queue.InFlightSlots == 0, $"{queue.InFlightSlots} slots still in flight");
        }, iter: 20_000, threads: 1);
    }
}
