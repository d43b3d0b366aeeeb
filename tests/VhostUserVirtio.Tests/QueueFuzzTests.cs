using System.Buffers.Binary;
using CsCheck;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Property test of the device-side chain walker over random descriptor tables, avail rings and
/// indirect tables: whatever the guest wrote, popping terminates, never throws, and every chain it
/// yields obeys the rules (inside memory, readable before writable, no longer than the queue).
/// </summary>
[Trait("tier", "unit")]
public sealed class QueueFuzzTests
{
    private const int QueueSize = 16;
    private const ulong MemSize = 0x10000;
    private const ulong Desc = 0x1000, Avail = 0x2000, Used = 0x3000, Tables = 0x4000, Buffers = 0x8000;

    private sealed record Input(byte[] Descriptors, ushort[] AvailRing, ushort AvailIdx, byte[] IndirectArea, bool Indirect, bool EventIdx);

    // Addresses mostly inside memory (buffers or the indirect area), sometimes at the edge or far outside.
    private static readonly Gen<ulong> Address = Gen.Frequency(
        (6, Gen.ULong[Buffers, MemSize - 1]),
        (3, Gen.Int[0, 15].Select(i => Tables + (ulong)i * 64)),
        (1, Gen.ULong[MemSize - 64, MemSize + 64]),
        (1, Gen.ULong));

    private static readonly Gen<byte[]> Descriptor = Gen.Select(Address, Gen.Frequency((4, Gen.UInt[0, 0x2000]), (1, Gen.UInt)),
        Gen.UShort[0, 7], Gen.Frequency((5, Gen.UShort[0, QueueSize - 1]), (1, Gen.UShort)), (addr, len, flags, next) =>
        {
            var d = new byte[16];
            BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
            BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(8), len % 3 == 0 ? len & ~15u : len); // often table-shaped lengths
            BinaryPrimitives.WriteUInt16LittleEndian(d.AsSpan(12), flags);
            BinaryPrimitives.WriteUInt16LittleEndian(d.AsSpan(14), next);
            return d;
        });

    private static readonly Gen<Input> Inputs = Gen.Select(
        Descriptor.Array[QueueSize].Select(ds => ds.SelectMany(d => d).ToArray()),
        Gen.Frequency((5, Gen.UShort[0, QueueSize - 1]), (1, Gen.UShort)).Array[QueueSize],
        Gen.Frequency((5, Gen.UShort[0, QueueSize]), (1, Gen.UShort)),
        Descriptor.Array[64].Select(ds => ds.SelectMany(d => d).ToArray()),
        Gen.Bool, Gen.Bool,
        (d, a, idx, ind, indirect, eventIdx) => new Input(d, a, idx, ind, indirect, eventIdx));

    [Fact]
    public void Random_guest_rings_never_escape_memory_or_crash_the_walker()
    {
        using var table = new GuestMemoryTable();
        table.Replace(new[] { (0UL, MemSize, 0x10_0000_0000UL, 0UL) }, new[] { MemFd.Create("fuzz", (long)MemSize) });
        var memory = table.Current;
        var queue = new SplitQueue(QueueSize);
        var scratch = new byte[0x4000];

        Inputs.Sample(input =>
        {
            Assert.True(memory.Write(0, new byte[MemSize]));
            Assert.True(memory.Write(Desc, input.Descriptors));
            Assert.True(memory.Write(Tables, input.IndirectArea));
            var ring = new byte[4 + 2 * QueueSize];
            BinaryPrimitives.WriteUInt16LittleEndian(ring.AsSpan(2), input.AvailIdx);
            for (int i = 0; i < QueueSize; i++)
                BinaryPrimitives.WriteUInt16LittleEndian(ring.AsSpan(4 + 2 * i), input.AvailRing[i]);
            Assert.True(memory.Write(Avail, ring));

            queue.Reset();
            queue.IndirectAllowed = input.Indirect;
            queue.EventIdx = input.EventIdx;
            Assert.Null(queue.Configure(memory, QueueSize, Desc, Avail, Used));

            int popped = 0;
            for (int round = 0; round < QueueSize + 2; round++)
            {
                var chain = queue.Pop();
                if (chain == null)
                    break;
                popped++;
                Assert.True(chain.ReadableCount + chain.WritableCount <= QueueSize);
                foreach (var seg in chain.Readable)
                    Assert.True(!seg.Writable && memory.IsRangeMapped(seg.Address, seg.Length));
                foreach (var seg in chain.Writable)
                    Assert.True(seg.Writable && memory.IsRangeMapped(seg.Address, seg.Length));
                var reader = chain.Reader();
                var writer = chain.Writer();
                reader.Read(scratch);
                writer.Write(scratch.AsSpan(0, (int)Math.Min(chain.WritableLength, (uint)scratch.Length)));
                queue.PushUsed(chain.Head, writer.Written);
                queue.NeedsNotification();
            }
            // Either everything offered was consumed, or the queue stopped with a reason.
            ushort offered = (ushort)Math.Min(input.AvailIdx, (ushort)(QueueSize + 2));
            Assert.True(queue.Fault != null || popped == offered || input.AvailIdx > QueueSize,
                $"popped {popped} of {input.AvailIdx} without a fault");
        }, iter: 20_000, threads: 1);
    }
}
