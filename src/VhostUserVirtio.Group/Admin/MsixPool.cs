using System.Buffers.Binary;

namespace VhostUserVirtio.Group.Admin;

/// <summary>
/// MSI-X vectors the owner hands out to its VFs (the "MSI-X vector management" admin proposal on virtio-comment, 2022): a pool of
/// <see cref="Total"/> vectors, at most <see cref="PerVfMax"/> per VF. Each VF starts with
/// <see cref="Default"/>. Changed only by admin commands, on the group's worker.
/// </summary>
public sealed class MsixPool
{
    private readonly int[] _assigned;

    public MsixPool(int totalVfs, int perVfMax = 64, int perVfAverage = 8, int initial = 4)
    {
        _assigned = Enumerable.Repeat(initial, totalVfs).ToArray();
        PerVfMax = perVfMax;
        Total = perVfAverage * totalVfs;
        Default = initial;
    }

    public int Total { get; }
    public int PerVfMax { get; }
    public int Default { get; }
    public int AssignedTotal => _assigned.Sum();

    /// <summary>Vectors of VF <paramref name="index"/> (0-based); its MSI-X table size.</summary>
    public int Assigned(int index) => _assigned[index];

    /// <summary>Whether the pool could cover <paramref name="count"/> vectors for a VF (checked before anything changes).</summary>
    public bool CanAssign(int index, int count) => AssignedTotal - _assigned[index] + count <= Total;

    /// <summary>Assigns <paramref name="count"/> vectors to a VF; false if the pool cannot cover it (nothing changes).</summary>
    public bool TryAssign(int index, int count)
    {
        if (!CanAssign(index, count))
            return false;
        _assigned[index] = count;
        return true;
    }

    /// <summary>A fresh VF (after VF Enable) starts from the default again.</summary>
    public void ResetAll() => Array.Fill(_assigned, Default);

    /// <summary>MEMBER_RESOURCE_ATTRS result: {le64 attrs_mask; le32 total; le32 assigned; le16 per_vf_max; u8 reserved[110]}.</summary>
    public AdminOutcome WriteAttributes(Span<byte> result)
    {
        const int size = 128;
        result[..size].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(result, 0b111);
        BinaryPrimitives.WriteUInt32LittleEndian(result[8..], (uint)Total);
        BinaryPrimitives.WriteUInt32LittleEndian(result[12..], (uint)AssignedTotal);
        BinaryPrimitives.WriteUInt16LittleEndian(result[16..], (ushort)PerVfMax);
        return AdminOutcome.Ok(size);
    }
}
