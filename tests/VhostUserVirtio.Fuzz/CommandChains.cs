using System.Buffers.Binary;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Fuzz;

/// <summary>
/// Makes command chains as a driver would place them on a split ring in its memory: the command
/// gathered from one to four readable buffers, the result room scattered over none to two writable
/// ones, popped through the real ring walker. One per thread; each chain is valid until the next.
/// </summary>
public sealed class CommandChains
{
    private const ulong MemorySize = 0x10000, Desc = 0, Avail = 0x100, Used = 0x200, Buffers = 0x1000;
    public const int MaxRequest = 0x9000, MaxRoom = 0x5000;

    private readonly GuestMemoryTable _table = new();
    private readonly SplitQueue _queue = new(8);
    private readonly byte[] _zeros = new byte[MemorySize - Buffers];

    public CommandChains() =>
        _table.Replace([(0UL, MemorySize, 0x7e00_0000_0000UL, 0UL)], [MemFd.Create("fuzz-commands", (long)MemorySize)]);

    public GuestMemory Memory => _table.Current;

    /// <summary>
    /// A chain carrying <paramref name="request"/> (cut to <see cref="MaxRequest"/>) with
    /// <paramref name="room"/> writable bytes, split as <paramref name="shape"/> says.
    /// </summary>
    public DescriptorChain Build(ReadOnlySpan<byte> request, int room, byte shape)
    {
        var memory = _table.Current;
        request = request[..Math.Min(request.Length, MaxRequest)];
        room = Math.Min(room, MaxRoom);
        memory.Write(Buffers, _zeros);
        int readable = request.IsEmpty ? 0 : 1 + shape % 4, writable = room == 0 ? 0 : (shape >> 2) % 3;
        if (readable + writable == 0)
            readable = 1; // a chain has at least one descriptor: an empty readable one
        Span<byte> d = stackalloc byte[16];
        ulong at = Buffers;
        int index = 0;
        for (int i = 0; i < readable; i++)
        {
            var piece = Piece(request, readable, i);
            memory.Write(at, piece);
            Descriptor(memory, d, index++, at, (uint)piece.Length, write: false, last: index == readable + writable);
            at += ((ulong)piece.Length + 15) & ~15UL;
        }
        for (int i = 0; i < writable; i++)
        {
            int length = room / writable + (i == writable - 1 ? room % writable : 0);
            Descriptor(memory, d, index++, at, (uint)length, write: true, last: index == readable + writable);
            at += ((ulong)length + 15) & ~15UL;
        }
        memory.Write(Avail, [0, 0, 1, 0, 0, 0]);
        memory.Write(Used, new byte[8]);
        _queue.Reset();
        var error = _queue.Configure(memory, 8, Desc, Avail, Used);
        FuzzInvariantException.Check(error == null, $"command ring refused: {error}");
        var chain = _queue.Pop();
        FuzzInvariantException.Check(chain != null, $"a well-formed command chain was refused: {_queue.Fault}");
        return chain!;
    }

    private static ReadOnlySpan<byte> Piece(ReadOnlySpan<byte> all, int pieces, int i)
    {
        int size = all.Length / pieces;
        return i == pieces - 1 ? all[(size * i)..] : all.Slice(size * i, size);
    }

    private static void Descriptor(GuestMemory memory, Span<byte> d, int index, ulong address, uint length, bool write, bool last)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], (ushort)((last ? 0 : 1) | (write ? 2 : 0)));
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], (ushort)(index + 1));
        memory.Write(Desc + 16 * (ulong)index, d);
    }
}
