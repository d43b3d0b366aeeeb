using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Fuzz;

/// <summary>
/// The device side of a split or packed ring over guest memory the input fills: the rings, the
/// indirect tables and the buffers are whatever the input says. The device pops chains, reads and
/// writes their buffers through the chain cursors, holds some back, gives some back (rewind), and
/// returns them in any order, with notifications and dirty logging on or off; the driver moves its
/// index between steps. Every chain must lie inside mapped memory and within the ring's limits.
///
/// Input: size selector, flags, base (u16), used-log address (u64), step count, steps, then the
/// memory image from guest address 0 (descriptor table first, then the driver's and the device's
/// areas, then buffers). Memory is two adjacent regions, so buffers may cross a mapping boundary.
/// </summary>
public static class RingTarget
{
    public const ulong RegionA = 0x8000, RegionB = 0x1000;
    private const ulong MemorySize = RegionA + RegionB;
    private const int MaxSize = 256;

    private static readonly Lazy<(GuestMemoryTable Table, DirtyLog Log)> Shared = new(() =>
    {
        var table = new GuestMemoryTable();
        table.Replace([(0UL, RegionA, 0x7f00_0000_0000UL, 0UL), (RegionA, RegionB, 0x7f00_0001_0000UL, 0UL)],
            [MemFd.Create("fuzz-ring-a", (long)RegionA), MemFd.Create("fuzz-ring-b", (long)RegionB)]);
        using var logFd = MemFd.Create("fuzz-ring-log", 4096);
        return (table, DirtyLog.Map(logFd, 4096, 0, allowUnsealed: true));
    });

    [ThreadStatic] private static byte[]? t_scratch;
    [ThreadStatic] private static byte[]? t_image;

    public static void RunSplit(ReadOnlySpan<byte> input) => Run(input, packed: false);
    public static void RunPacked(ReadOnlySpan<byte> input) => Run(input, packed: true);

    private static void Run(ReadOnlySpan<byte> data, bool packed)
    {
        var (table, log) = Shared.Value;
        var memory = table.Current;
        var scratch = t_scratch ??= new byte[0x3000];
        var image = t_image ??= new byte[MemorySize];

        var input = new FuzzInput(data);
        byte sizeSelector = input.Byte();
        byte flags = input.Byte();
        ushort @base = input.U16();
        ulong usedLogAddress = input.U64();
        var steps = input.Take(input.Byte());
        // Sizes are mostly powers of two (the split ring allows nothing else); bit 7 asks for any size.
        int size = (sizeSelector & 0x80) != 0 ? (sizeSelector & 0x7f) + 1 : 1 << (sizeSelector % 9);

        Array.Clear(image);
        input.Take(image.Length).CopyTo(image);
        FuzzInvariantException.Check(memory.Write(0, image), "the fuzz memory is not mapped");

        // Rings packed one after the other from address 0, each part at its alignment.
        ulong desc = 0, driver = (ulong)(16 * size), device;
        Virtqueue queue;
        if (packed)
        {
            device = driver + 4;
            queue = new PackedQueue(MaxSize);
        }
        else
        {
            device = (driver + 6 + 2 * (ulong)size + 3) & ~3UL;
            queue = new SplitQueue(MaxSize);
        }
        queue.IndirectAllowed = (flags & 1) != 0;
        queue.EventIdx = (flags & 2) != 0;
        if (queue.Configure(memory, new RingPlacement(size, desc, driver, device)) != null)
            return;
        if (queue is PackedQueue p)
        {
            if (p.SetVringBase(@base) != null)
                return;
        }
        else
        {
            queue.NextAvail = @base;
            ((SplitQueue)queue).SyncUsedIndex();
        }
        if ((flags & 4) != 0)
            queue.SetDirtyLog(log, (flags & 8) != 0 ? usedLogAddress : null);

        var held = new List<(ushort Head, uint Length)>();
        int poppedSinceRelease = 0; // chains popped and still held since the last push: only those may be rewound
        foreach (byte step in steps)
        {
            int arg = step >> 3;
            switch (step & 7)
            {
                case 0: // pop and complete at once
                    if (queue.Pop() is { } chain)
                        queue.PushUsed(chain.Head, Consume(chain, queue, memory, scratch, arg), publish: (arg & 1) != 0);
                    poppedSinceRelease = 0;
                    break;
                case 1: // pop and hold
                    if (queue.Pop() is { } held1)
                    {
                        held.Add((held1.Head, Consume(held1, queue, memory, scratch, arg)));
                        poppedSinceRelease++;
                    }
                    break;
                case 2: // give back the last chains popped and held (the device could not take them now)
                    int count = Math.Min(arg % 4 + 1, poppedSinceRelease);
                    queue.Rewind(count);
                    held.RemoveRange(held.Count - count, count);
                    poppedSinceRelease -= count;
                    break;
                case 3: // return held chains, newest or oldest first
                    Release(queue, held, newestFirst: (arg & 1) != 0, max: arg / 2 + 1);
                    poppedSinceRelease = 0;
                    break;
                case 4: // notification decisions
                    switch (arg % 4)
                    {
                        case 0: queue.NeedsNotification(); break;
                        case 1: queue.DisableNotification(); break;
                        case 2: queue.EnableNotification(); break;
                        default: queue.PublishUsed(); break;
                    }
                    _ = queue.HasPending;
                    break;
                case 5: // the driver moves: one byte of the rings changes under the device
                    ulong at = (ulong)(arg * 7 % (int)Math.Min(MemorySize, device + 4 + 8 * (ulong)size));
                    memory.Write(at, [(byte)(step ^ arg)]);
                    break;
                case 6: // the device drains as the data path does
                    var handler = new DrainHandler(scratch, queue.Size);
                    queue.Drain(ref handler, rearm: (arg & 1) != 0, budget: arg % 8 + 1);
                    poppedSinceRelease = 0;
                    break;
                default: // memory table change: the ring re-resolves against the same regions
                    queue.Remap(memory);
                    break;
            }
        }
        // Finish as a device does: take what is left, return everything held.
        for (int i = 0; i < 2 * MaxSize && queue.Pop() is { } chain; i++)
            queue.PushUsed(chain.Head, Consume(chain, queue, memory, scratch, 0), publish: false);
        Release(queue, held, newestFirst: false, max: int.MaxValue);
        queue.PublishUsed();
        queue.EnableNotification();
        FuzzInvariantException.Check(queue.Pop() == null || queue.Fault == null, "a broken ring popped a chain");
        if (queue is PackedQueue pq && pq.Fault == null)
            FuzzInvariantException.Check(pq.InFlightSlots == 0, $"{pq.InFlightSlots} slots in flight after every chain was returned");
    }

    private static void Release(Virtqueue queue, List<(ushort Head, uint Length)> held, bool newestFirst, int max)
    {
        for (int i = 0; i < max && held.Count > 0; i++)
        {
            int at = newestFirst ? held.Count - 1 : 0;
            var (head, length) = held[at];
            held.RemoveAt(at);
            queue.PushUsed(head, length, publish: false);
        }
        queue.PublishUsed();
    }

    /// <summary>Checks a popped chain against the rules, then reads all of it and writes some of it.</summary>
    private static uint Consume(DescriptorChain chain, Virtqueue queue, GuestMemory memory, byte[] scratch, int arg)
    {
        Validate(chain, queue.Size, memory);
        var reader = chain.Reader();
        if ((arg & 2) != 0)
            reader.Skip(arg);
        int read = reader.Read(scratch);
        FuzzInvariantException.Check(read <= chain.ReadableLength, $"read {read} bytes of a chain with {chain.ReadableLength} readable");
        chain.TryGetReadable((uint)arg, 12, out _);
        chain.TryGetFirstWritable(12, out _);
        var writer = chain.Writer();
        int room = (int)Math.Min(chain.WritableLength, (uint)scratch.Length);
        int wrote = writer.Write(scratch.AsSpan(0, (arg & 4) != 0 ? room / 2 : room));
        FuzzInvariantException.Check(wrote <= room && writer.Written == (uint)wrote, $"wrote {wrote} of {room}");
        chain.WriteAt((uint)arg, scratch.AsSpan(0, 4));
        return writer.Written;
    }

    private static void Validate(DescriptorChain chain, int size, GuestMemory memory)
    {
        FuzzInvariantException.Check(chain.Head < size, $"head {chain.Head} not below the size {size}");
        FuzzInvariantException.Check(chain.ReadableCount + chain.WritableCount <= size,
            $"{chain.ReadableCount}+{chain.WritableCount} segments in a ring of {size}");
        ulong readable = 0, writable = 0;
        foreach (var s in chain.Readable)
        {
            FuzzInvariantException.Check(!s.Writable && memory.IsRangeMapped(s.Address, s.Length), $"readable segment {s} outside memory");
            readable += s.Length;
        }
        foreach (var s in chain.Writable)
        {
            FuzzInvariantException.Check(s.Writable && memory.IsRangeMapped(s.Address, s.Length), $"writable segment {s} outside memory");
            writable += s.Length;
        }
        FuzzInvariantException.Check(readable == chain.ReadableLength && writable == chain.WritableLength, "lengths do not add up");
    }

    private readonly struct DrainHandler(byte[] scratch, int size) : IChainHandler
    {
        public uint Handle(DescriptorChain chain)
        {
            Validate(chain, size, chain.Memory);
            var reader = chain.Reader();
            reader.Read(scratch);
            var writer = chain.Writer();
            writer.Write(scratch.AsSpan(0, (int)Math.Min(chain.WritableLength, 64)));
            return writer.Written;
        }
    }
}
