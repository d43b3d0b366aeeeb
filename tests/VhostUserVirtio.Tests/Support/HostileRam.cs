using System.Buffers.Binary;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// The guest RAM of a hostile front end: two adjacent 1 MiB memfd regions (A at guest physical 0,
/// B right after it), named "hostile-ram-*" so a mapping the back end keeps of them is easy to spot
/// in /proc/PID/maps. Ring areas for each queue sit at fixed places in A; buffers anywhere after.
/// </summary>
public sealed unsafe class HostileRam : IDisposable
{
    public const ulong RegionSize = 1 << 20;
    public const ulong GpaA = 0, GpaB = RegionSize;
    public const ulong UvaA = 0x7e00_0000_0000, UvaB = 0x7e00_0010_0000;
    /// <summary>Room per queue for a 1024-entry ring: descriptors, then avail at +0x4000, used at +0x5000.</summary>
    public const ulong RingStride = 0x8000;
    /// <summary>Where buffers may go (after the ring areas of up to 8 queues).</summary>
    public const ulong BufferArea = 8 * RingStride;

    private readonly FileDescriptor[] _fds;
    private readonly MemoryMapping[] _maps;

    /// <param name="sealable">False: region A cannot be sealed against shrinking (see <see cref="HostileFds.UnsealableMemFd"/>).</param>
    public HostileRam(string name = "hostile-ram", bool sealable = true)
    {
        _fds =
        [
            sealable ? MemFd.Create(name + "-a", (long)RegionSize) : HostileFds.UnsealableMemFd(name + "-a", (long)RegionSize),
            MemFd.Create(name + "-b", (long)RegionSize),
        ];
        _maps = _fds.Select(fd => MemoryMapping.Map(fd, RegionSize)).ToArray();
    }

    public static readonly MemoryRegionDescription A = new(GpaA, RegionSize, UvaA, 0);
    public static readonly MemoryRegionDescription B = new(GpaB, RegionSize, UvaB, 0);

    public FileDescriptor RegionFd(int i) => _fds[i];

    public static ulong DescTable(int queue) => GpaA + (ulong)queue * RingStride;
    public static ulong Avail(int queue) => DescTable(queue) + 0x4000;
    public static ulong Used(int queue) => DescTable(queue) + 0x5000;
    public static ulong Uva(ulong gpa) => gpa < GpaB ? UvaA + gpa : UvaB + (gpa - GpaB);

    /// <summary>Bytes at a guest physical address inside A or B.</summary>
    public Span<byte> Span(ulong gpa, int length)
    {
        int i = gpa < GpaB ? 0 : 1;
        ulong offset = gpa - (i == 0 ? GpaA : GpaB);
        if (offset + (ulong)length > RegionSize)
            throw new ArgumentOutOfRangeException(nameof(gpa), $"0x{gpa:x}+{length} leaves region {i}");
        return new Span<byte>((byte*)_maps[i].Address + offset, length);
    }

    /// <summary>Writes one split-ring descriptor of <paramref name="queue"/> verbatim.</summary>
    public void WriteDescriptor(int queue, int index, ulong address, uint length, ushort flags, ushort next)
    {
        var d = Span(DescTable(queue) + (ulong)(index % 1024) * 16, 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    /// <summary>Writes an avail ring slot and then the avail index, as a driver publishes (whatever the values).</summary>
    public void Publish(int queue, ushort slot, ushort head, ushort availIndex)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(Span(Avail(queue) + 4 + (ulong)(slot % 1024) * 2, 2), head);
        Volatile.Write(ref *(ushort*)((byte*)_maps[0].Address + Avail(queue) + 2), availIndex);
    }

    public void Dispose()
    {
        foreach (var m in _maps)
            m.Dispose();
        foreach (var fd in _fds)
            fd.Dispose();
    }
}
