using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace VhostUserVirtio.Queue;

/// <summary>
/// One queue's part of an <see cref="InflightRegion"/> (QueueRegionSplit). The ring writes it on its
/// data path (<see cref="SplitQueue"/>: a chain taken, a batch completed) and reads it back only
/// when it resumes (<see cref="Resume"/>), where every field is checked: the memory is shared with
/// whoever handed it over. Valid while its <see cref="InflightRegion"/> is mapped.
/// </summary>
public sealed unsafe class InflightQueueRegion
{
    private readonly byte* _base;

    internal InflightQueueRegion(InflightRegion owner, byte* @base, int capacity)
    {
        Owner = owner;
        _base = @base;
        Capacity = capacity;
    }

    /// <summary>The buffer this region is part of (kept alive by this reference).</summary>
    public InflightRegion Owner { get; }
    /// <summary>Descriptors the region has room for.</summary>
    public int Capacity { get; }

    public ulong Features => ReadU64(InflightLayout.Features);
    public ushort Version => ReadU16(InflightLayout.VersionField);
    public ushort DescNum => ReadU16(InflightLayout.DescNum);
    public ushort LastBatchHead => ReadU16(InflightLayout.LastBatchHead);
    public ushort UsedIdx => ReadU16(InflightLayout.UsedIdx);

    /// <summary>desc[<paramref name="head"/>].inflight (0 or 1 in a sound region).</summary>
    public byte InflightFlag(int head) => Volatile.Read(ref *Desc(CheckHead(head)));
    public ushort NextOf(int head) => ReadU16(Offset(CheckHead(head)) + InflightLayout.Next);
    public ulong CounterOf(int head) => ReadU64(Offset(CheckHead(head)) + InflightLayout.Counter);

    /// <summary>Heads marked in flight, for diagnostics and tests (allocates).</summary>
    public int[] InflightHeads()
    {
        int n = Math.Min((int)DescNum, Capacity);
        var heads = new List<int>();
        for (int i = 0; i < n; i++)
            if (InflightFlag(i) != 0)
                heads.Add(i);
        return heads.ToArray();
    }

    /// <summary>Writes raw header fields; for tools and tests that build or damage a region on purpose.</summary>
    public void WriteHeader(ulong features, ushort version, ushort descNum, ushort lastBatchHead, ushort usedIdx)
    {
        WriteU64(InflightLayout.Features, features);
        WriteU16(InflightLayout.VersionField, version);
        WriteU16(InflightLayout.DescNum, descNum);
        WriteU16(InflightLayout.LastBatchHead, lastBatchHead);
        WriteU16(InflightLayout.UsedIdx, usedIdx);
    }

    /// <summary>Writes one raw descriptor state; for tools and tests.</summary>
    public void WriteDescState(int head, byte inflight, ushort next, ulong counter)
    {
        long o = Offset(CheckHead(head));
        _base[o + InflightLayout.Inflight] = inflight;
        WriteU16(o + InflightLayout.Next, next);
        WriteU64(o + InflightLayout.Counter, counter);
    }

    private int CheckHead(int head)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(head);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(head, Capacity);
        return head;
    }

    // Data path: heads are below the ring size, which is at most Capacity (checked at Resume).

    /// <summary>A chain was taken: counter first, then the flag (the spec's order).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Take(ushort head, ulong counter)
    {
        byte* d = Desc(head);
        *(ulong*)(d + InflightLayout.Counter) = counter;
        d[InflightLayout.Completed] = 0;
        Volatile.Write(ref *d, (byte)1);
    }

    /// <summary>The chain's used element is written (not yet published): its work is done.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Complete(ushort head) => Volatile.Write(ref *(Desc(head) + InflightLayout.Completed), (byte)1);

    /// <summary>Whether the chain at <paramref name="head"/> (in flight) had its used element written.</summary>
    internal bool IsCompleted(ushort head) => Volatile.Read(ref *(Desc(head) + InflightLayout.Completed)) == 1;

    /// <summary>A chain is given back without being used (a rewind): no longer in flight.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Release(ushort head) => Volatile.Write(ref *Desc(head), (byte)0);

    /// <summary>The first head of a batch about to be published.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void BeginBatch(ushort head) => *(ushort*)(_base + InflightLayout.LastBatchHead) = head;

    /// <summary>Links <paramref name="head"/> after <paramref name="previous"/> in the batch being built.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Link(ushort previous, ushort head) => *(ushort*)(Desc(previous) + InflightLayout.Next) = head;

    /// <summary>The batch's used index is published: record that its chains are done.</summary>
    internal void EndBatch(ReadOnlySpan<ushort> heads, ushort usedIdx)
    {
        foreach (ushort h in heads)
        {
            Volatile.Write(ref *Desc(h), (byte)0);
            *(Desc(h) + InflightLayout.Completed) = 0;
        }
        // Release: the flags are cleared before used_idx says the batch is recorded.
        Volatile.Write(ref *(ushort*)(_base + InflightLayout.UsedIdx), usedIdx);
    }

    /// <summary>
    /// Brings the region in line with a ring of <paramref name="size"/> descriptors whose used index
    /// in guest memory is <paramref name="ringUsed"/> (vhost-user.rst "When reconnecting", as
    /// libvhost-user's vu_check_queue_inflights): a fresh region (version 0) is initialised; a used
    /// batch published but not recorded is recorded; the heads still in flight are written to
    /// <paramref name="resubmit"/> in counter order. Everything is checked before anything is
    /// written, so a refused region is left as it was. Returns the number of heads to resubmit and
    /// the next counter value, or the error that makes the region unusable.
    /// </summary>
    internal RingError? Resume(int size, ushort ringUsed, ushort[] resubmit, ulong[] counters, out int count, out ulong nextCounter)
    {
        count = 0;
        nextCounter = 0;
        if (size > Capacity)
            return Corrupt($"the ring has {size} descriptors, its inflight region room for {Capacity}");
        ushort version = Version;
        if (version == 0)
        {
            // Fresh (just made by GET_INFLIGHT_FD, or zeroed): nothing in flight. used_idx starts at
            // the ring's used index, so a ring with history is not mistaken for an unrecorded batch.
            new Span<byte>(_base, InflightLayout.HeaderSize + InflightLayout.DescStateSize * size).Clear();
            WriteU16(InflightLayout.DescNum, (ushort)size);
            WriteU16(InflightLayout.UsedIdx, ringUsed);
            Volatile.Write(ref *(ushort*)(_base + InflightLayout.VersionField), InflightLayout.Version);
            return null;
        }
        if (version != InflightLayout.Version)
            return Corrupt($"version {version}, only {InflightLayout.Version} is defined");
        ushort descNum = DescNum;
        if (descNum != size)
            return Corrupt($"desc_num {descNum} differs from the ring size {size}");

        // A batch whose used index reached the ring but not the region: its heads, linked through
        // next from last_batch_head, are no longer in flight.
        ushort regionUsed = UsedIdx;
        int batch = (ushort)(ringUsed - regionUsed);
        if (batch > size)
            return Corrupt($"the ring's used index {ringUsed} is {batch} ahead of the recorded {regionUsed}, more than the ring size {size}");
        var done = new bool[size];
        ushort head = LastBatchHead;
        for (int i = 0; i < batch; i++)
        {
            if (head >= size)
                return Corrupt($"the unrecorded batch names head {head}, not below the ring size {size}");
            if (done[head])
                return Corrupt($"the unrecorded batch names head {head} twice");
            done[head] = true;
            head = ReadU16(Offset(head) + InflightLayout.Next);
        }

        ulong max = 0;
        for (int i = 0; i < size; i++)
        {
            byte flag = Volatile.Read(ref *Desc(i));
            if (flag > 1)
                return Corrupt($"descriptor {i} has inflight flag {flag}, not 0 or 1");
            if (flag == 0 || done[i])
                continue;
            ulong counter = ReadU64(Offset(i) + InflightLayout.Counter);
            resubmit[count] = (ushort)i;
            counters[count] = counter;
            max = Math.Max(max, counter);
            count++;
        }
        Array.Sort(counters, resubmit, 0, count);
        for (int i = 1; i < count; i++)
            if (counters[i] == counters[i - 1])
                return Corrupt($"heads {resubmit[i - 1]} and {resubmit[i]} share the counter {counters[i]}: their order is unknown");
        if (count > 0 && max == ulong.MaxValue)
            return Corrupt("a counter is at its maximum: no later chain could be ordered after it");

        if (batch > 0)
        {
            for (int i = 0; i < size; i++)
                if (done[i])
                    Volatile.Write(ref *Desc(i), (byte)0);
            Volatile.Write(ref *(ushort*)(_base + InflightLayout.UsedIdx), ringUsed);
        }
        nextCounter = count > 0 ? max + 1 : 0;
        return null;
    }

    private static RingError Corrupt(string detail) => new(RingErrorKind.InflightRegionCorrupt, $"inflight region: {detail}");

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static long Offset(int head) => InflightLayout.HeaderSize + (long)InflightLayout.DescStateSize * head;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private byte* Desc(int head) => _base + Offset(head);

    private ushort ReadU16(long offset) => BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(_base + offset, 2));
    private ulong ReadU64(long offset) => BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(_base + offset, 8));
    private void WriteU16(long offset, ushort value) => BinaryPrimitives.WriteUInt16LittleEndian(new Span<byte>(_base + offset, 2), value);
    private void WriteU64(long offset, ulong value) => BinaryPrimitives.WriteUInt64LittleEndian(new Span<byte>(_base + offset, 8), value);
}
