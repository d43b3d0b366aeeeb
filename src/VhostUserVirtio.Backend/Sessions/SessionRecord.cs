using System.Buffers.Binary;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend.Sessions;

/// <summary>
/// A <see cref="SessionState"/> written into a small shared file the session keeper holds, with
/// descriptors replaced by the ids they are kept under. Two slots: a new record is written into the
/// idle one and then made current with one aligned store, so a process killed while writing leaves
/// the previous record intact. Read back in a new process, every field is checked before use.
/// </summary>
public sealed unsafe class SessionRecord : IDisposable
{
    private const ulong Magic = 0x3153534556554856; // "VHUVESS1"
    private const int HeaderSize = 64;
    /// <summary>Bytes per slot: room for every memory slot (36 bytes each) and 256 rings (55 bytes each).</summary>
    public const int SlotSize = 64 * 1024;
    public const long FileSize = HeaderSize + 2 * SlotSize;
    private const int MaxQueues = 256, MaxRegions = Memory.GuestMemoryTable.MaxSlots;

    private readonly MemoryMapping _map;

    private SessionRecord(FileDescriptor fd)
    {
        Descriptor = fd;
        _map = MemoryMapping.Map(fd, (ulong)FileSize, 0);
    }

    /// <summary>The shared file, to be kept.</summary>
    public FileDescriptor Descriptor { get; }

    /// <summary>A new, empty record.</summary>
    public static SessionRecord Create(string name)
    {
        var fd = MemFd.Create(name, FileSize, allowSealing: false);
        return new SessionRecord(fd);
    }

    /// <summary>Opens a kept record; ArgumentException when the file is not one (too small).</summary>
    public static SessionRecord Open(FileDescriptor fd)
    {
        if (fd.GetFileSize() < FileSize)
            throw new ArgumentException("not a session record (file too small)");
        return new SessionRecord(fd);
    }

    private byte* Base => (byte*)_map.Address;
    private ref ulong ActiveSlot => ref *(ulong*)(Base + 8);

    /// <summary>Writes <paramref name="state"/> (descriptors as <paramref name="ids"/> give them) and makes it current.</summary>
    public void Write(SessionState state, Func<FileDescriptor, uint> ids)
    {
        ulong next = Volatile.Read(ref ActiveSlot) == 1 ? 2UL : 1UL;
        var slot = new Span<byte>(Base + HeaderSize + (int)(next - 1) * SlotSize, SlotSize);
        int length = Encode(state, ids, slot[4..]);
        BinaryPrimitives.WriteInt32LittleEndian(slot, length);
        *(ulong*)Base = Magic;
        Volatile.Write(ref ActiveSlot, next);
    }

    /// <summary>Marks the record empty (no session).</summary>
    public void Clear() => Volatile.Write(ref ActiveSlot, 0);

    /// <summary>The current record with descriptors looked up by id; null when empty. Throws InvalidDataException when it does not parse.</summary>
    public SessionState? Read(Func<uint, FileDescriptor?> lookup)
    {
        if (*(ulong*)Base != Magic)
            return null;
        ulong active = Volatile.Read(ref ActiveSlot);
        if (active == 0)
            return null;
        if (active > 2)
            throw new InvalidDataException($"active slot {active}");
        var slot = new ReadOnlySpan<byte>(Base + HeaderSize + (int)(active - 1) * SlotSize, SlotSize);
        int length = BinaryPrimitives.ReadInt32LittleEndian(slot);
        if (length < 0 || length > SlotSize - 4)
            throw new InvalidDataException($"record length {length}");
        return Decode(slot.Slice(4, length), lookup);
    }

    private static int Encode(SessionState s, Func<FileDescriptor, uint> ids, Span<byte> into)
    {
        var w = new Writer(into);
        w.U8(s.NotResumable == null ? (byte)1 : (byte)0);
        w.Text(s.NotResumable ?? "");
        w.U64(s.Features);
        w.U8(s.FeaturesSet ? (byte)1 : (byte)0);
        w.U64((ulong)s.Protocol);
        w.U8(s.Owned ? (byte)1 : (byte)0);
        w.U8(s.Status);
        w.U16((ushort)s.Regions.Count);
        foreach (var r in s.Regions)
        {
            w.U64(r.GuestAddress); w.U64(r.Size); w.U64(r.UserAddress); w.U64(r.MmapOffset);
            w.U32(ids(r.Descriptor));
        }
        w.U16((ushort)s.Queues.Count);
        foreach (var q in s.Queues)
        {
            w.U16((ushort)q.Index); w.U32((uint)q.Size); w.U32(q.Base);
            w.U8((byte)((q.Running ? 1 : 0) | (q.Enabled ? 2 : 0) | (q.Addresses != null ? 4 : 0) | (q.LogAddress != null ? 8 : 0)));
            var a = q.Addresses ?? default;
            w.U64(a.Desc); w.U64(a.Avail); w.U64(a.Used); w.U64(q.LogAddress ?? 0);
            w.U32(q.Kick != null ? ids(q.Kick) : 0); w.U32(q.Call != null ? ids(q.Call) : 0); w.U32(q.Err != null ? ids(q.Err) : 0);
        }
        var i = s.Inflight;
        w.U32(i != null ? ids(i.Descriptor) : 0);
        w.U64(i?.Size ?? 0); w.U64(i?.Offset ?? 0); w.U32((uint)(i?.Queues ?? 0)); w.U32((uint)(i?.QueueSize ?? 0));
        return w.Position;
    }

    private static SessionState Decode(ReadOnlySpan<byte> data, Func<uint, FileDescriptor?> lookup)
    {
        var r = new Reader(data);
        bool resumable = r.U8() == 1;
        string reason = r.Text();
        ulong features = r.U64();
        bool featuresSet = r.U8() == 1;
        var protocol = (ProtocolFeatures)r.U64();
        bool owned = r.U8() == 1;
        byte status = r.U8();
        int regionCount = r.U16();
        if (regionCount > MaxRegions)
            throw new InvalidDataException($"{regionCount} regions");
        var regions = new List<KeptRegion>(regionCount);
        for (int i = 0; i < regionCount; i++)
        {
            ulong gpa = r.U64(), size = r.U64(), uaddr = r.U64(), offset = r.U64();
            regions.Add(new KeptRegion(gpa, size, uaddr, offset, Need(lookup, r.U32(), $"region {i}")));
        }
        int queueCount = r.U16();
        if (queueCount > MaxQueues)
            throw new InvalidDataException($"{queueCount} queues");
        var queues = new List<KeptQueue>(queueCount);
        for (int i = 0; i < queueCount; i++)
        {
            int index = r.U16();
            uint size = r.U32(), @base = r.U32();
            byte flags = r.U8();
            ulong desc = r.U64(), avail = r.U64(), used = r.U64(), log = r.U64();
            uint kick = r.U32(), call = r.U32(), err = r.U32();
            if (size > ushort.MaxValue + 1u)
                throw new InvalidDataException($"queue {index}: size {size}");
            queues.Add(new KeptQueue(index, (int)size, @base, (flags & 1) != 0, (flags & 2) != 0,
                (flags & 4) != 0 ? (desc, avail, used) : null, (flags & 8) != 0 ? log : null,
                kick == 0 ? null : Need(lookup, kick, $"queue {index} kick"),
                call == 0 ? null : Need(lookup, call, $"queue {index} call"),
                err == 0 ? null : Need(lookup, err, $"queue {index} err")));
        }
        uint inflightId = r.U32();
        ulong inflightSize = r.U64(), inflightOffset = r.U64();
        uint inflightQueues = r.U32(), inflightQueueSize = r.U32();
        if (inflightQueues > MaxQueues || inflightQueueSize > ushort.MaxValue + 1u)
            throw new InvalidDataException($"inflight buffer for {inflightQueues} queues of {inflightQueueSize}");
        var inflight = inflightId == 0 ? null
            : new KeptInflight(inflightSize, inflightOffset, (int)inflightQueues, (int)inflightQueueSize, Need(lookup, inflightId, "inflight buffer"));
        return new SessionState
        {
            Features = features, FeaturesSet = featuresSet, Protocol = protocol, Owned = owned, Status = status,
            Regions = regions, Queues = queues, Inflight = inflight,
            NotResumable = resumable ? null : reason.Length > 0 ? reason : "the previous process recorded it as not resumable",
        };
    }

    private static FileDescriptor Need(Func<uint, FileDescriptor?> lookup, uint id, string what) =>
        lookup(id) ?? throw new InvalidDataException($"{what}: descriptor {id} was not kept");

    public void Dispose()
    {
        _map.Dispose();
        Descriptor.Dispose();
    }

    private ref struct Writer(Span<byte> buffer)
    {
        private readonly Span<byte> _buffer = buffer;
        public int Position { get; private set; }
        private Span<byte> Take(int n) { var s = _buffer.Slice(Position, n); Position += n; return s; }
        public void U8(byte v) => Take(1)[0] = v;
        public void U16(ushort v) => BinaryPrimitives.WriteUInt16LittleEndian(Take(2), v);
        public void U32(uint v) => BinaryPrimitives.WriteUInt32LittleEndian(Take(4), v);
        public void U64(ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(Take(8), v);
        public void Text(string v)
        {
            var bytes = System.Text.Encoding.UTF8.GetBytes(v.Length > 200 ? v[..200] : v);
            U16((ushort)bytes.Length);
            bytes.CopyTo(Take(bytes.Length));
        }
    }

    private ref struct Reader(ReadOnlySpan<byte> buffer)
    {
        private readonly ReadOnlySpan<byte> _buffer = buffer;
        private int _position;
        private ReadOnlySpan<byte> Take(int n)
        {
            if (_buffer.Length - _position < n)
                throw new InvalidDataException("record ends early");
            var s = _buffer.Slice(_position, n);
            _position += n;
            return s;
        }
        public byte U8() => Take(1)[0];
        public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Take(2));
        public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
        public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));
        public string Text()
        {
            int length = U16();
            return System.Text.Encoding.UTF8.GetString(Take(length));
        }
    }
}
