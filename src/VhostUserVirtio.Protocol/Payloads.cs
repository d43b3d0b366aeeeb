using System.Buffers.Binary;

namespace VhostUserVirtio.Protocol;

// Payload layouts (vhost-user.rst "Payload"). The machine is x86_64, so native order = little-endian;
// every parser here takes an exactly-sized span (sizes are enforced by MessageRules first).

/// <summary>Vring state / split-ring base: u32 index; u32 num.</summary>
public readonly record struct VringState(uint Index, uint Num)
{
    public const int Size = 8;
    public static VringState Read(ReadOnlySpan<byte> s) =>
        new(BinaryPrimitives.ReadUInt32LittleEndian(s), BinaryPrimitives.ReadUInt32LittleEndian(s[4..]));
    public void Write(Span<byte> s)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(s, Index);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], Num);
    }
}

/// <summary>Vring addresses: front-end virtual addresses of the three ring parts, and the log address.</summary>
public readonly record struct VringAddress(uint Index, uint Flags, ulong Descriptor, ulong Used, ulong Available, ulong Log)
{
    public const int Size = 40;
    public const uint LogFlag = 0x1;

    public static VringAddress Read(ReadOnlySpan<byte> s) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(s),
        BinaryPrimitives.ReadUInt32LittleEndian(s[4..]),
        BinaryPrimitives.ReadUInt64LittleEndian(s[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(s[16..]),
        BinaryPrimitives.ReadUInt64LittleEndian(s[24..]),
        BinaryPrimitives.ReadUInt64LittleEndian(s[32..]));

    public void Write(Span<byte> s)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(s, Index);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], Flags);
        BinaryPrimitives.WriteUInt64LittleEndian(s[8..], Descriptor);
        BinaryPrimitives.WriteUInt64LittleEndian(s[16..], Used);
        BinaryPrimitives.WriteUInt64LittleEndian(s[24..], Available);
        BinaryPrimitives.WriteUInt64LittleEndian(s[32..], Log);
    }
}

/// <summary>SET_LOG_BASE: the dirty log's size and offset in the descriptor sent with it (LOG_SHMFD).</summary>
public readonly record struct LogPayload(ulong MmapSize, ulong MmapOffset)
{
    public const int Size = 16;

    public static LogPayload Read(ReadOnlySpan<byte> s) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(s),
        BinaryPrimitives.ReadUInt64LittleEndian(s[8..]));

    public void Write(Span<byte> s)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(s, MmapSize);
        BinaryPrimitives.WriteUInt64LittleEndian(s[8..], MmapOffset);
    }
}

/// <summary>One memory region: guest physical address, size, front-end virtual address, offset in the fd.</summary>
public readonly record struct MemoryRegionDescription(ulong GuestPhysAddr, ulong MemorySize, ulong UserspaceAddr, ulong MmapOffset)
{
    public const int Size = 32;

    public static MemoryRegionDescription Read(ReadOnlySpan<byte> s) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(s),
        BinaryPrimitives.ReadUInt64LittleEndian(s[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(s[16..]),
        BinaryPrimitives.ReadUInt64LittleEndian(s[24..]));

    public void Write(Span<byte> s)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(s, GuestPhysAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(s[8..], MemorySize);
        BinaryPrimitives.WriteUInt64LittleEndian(s[16..], UserspaceAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(s[24..], MmapOffset);
    }

    /// <summary>Why this region is unusable (zero size or an end that overflows 64 bits), or null.</summary>
    public string? Problem()
    {
        if (MemorySize == 0)
            return "zero-sized region";
        if (GuestPhysAddr + MemorySize < GuestPhysAddr)
            return "guest_phys_addr + memory_size overflows";
        if (UserspaceAddr + MemorySize < UserspaceAddr)
            return "userspace_addr + memory_size overflows";
        if (MmapOffset + MemorySize < MmapOffset)
            return "mmap_offset + memory_size overflows";
        return null;
    }
}

/// <summary>SET_MEM_TABLE payload: u32 nregions; u32 padding; regions[nregions].</summary>
public static class MemoryTablePayload
{
    public const int HeaderSize = 8;

    public static int SizeFor(int regions) => HeaderSize + regions * MemoryRegionDescription.Size;

    /// <summary>Parses the table; returns null with a reason when nregions disagrees with the payload size.</summary>
    public static MemoryRegionDescription[]? Read(ReadOnlySpan<byte> s, out string? error)
    {
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(s);
        if (n > MessageHeader.MaxFds || SizeFor((int)n) != s.Length)
        {
            error = $"nregions {n} does not match a {s.Length}-byte payload (at most {MessageHeader.MaxFds} regions)";
            return null;
        }
        var regions = new MemoryRegionDescription[n];
        for (int i = 0; i < n; i++)
            regions[i] = MemoryRegionDescription.Read(s.Slice(HeaderSize + i * MemoryRegionDescription.Size));
        error = null;
        return regions;
    }

    public static byte[] Write(ReadOnlySpan<MemoryRegionDescription> regions)
    {
        var buf = new byte[SizeFor(regions.Length)];
        BinaryPrimitives.WriteUInt32LittleEndian(buf, (uint)regions.Length);
        for (int i = 0; i < regions.Length; i++)
            regions[i].Write(buf.AsSpan(HeaderSize + i * MemoryRegionDescription.Size));
        return buf;
    }
}

/// <summary>ADD_MEM_REG / REM_MEM_REG payload: u64 padding; one region.</summary>
public static class SingleRegionPayload
{
    public const int Size = 8 + MemoryRegionDescription.Size;

    public static MemoryRegionDescription Read(ReadOnlySpan<byte> s) => MemoryRegionDescription.Read(s[8..]);

    public static byte[] Write(MemoryRegionDescription region)
    {
        var buf = new byte[Size];
        region.Write(buf.AsSpan(8));
        return buf;
    }
}

/// <summary>GET_CONFIG / SET_CONFIG payload: u32 offset; u32 size; u32 flags; u8 data[size].</summary>
public readonly record struct ConfigHeader(uint Offset, uint Size, uint Flags)
{
    public const int Length = 12;
    /// <summary>QEMU's VHOST_USER_MAX_CONFIG_SIZE.</summary>
    public const int MaxData = 256;

    public static ConfigHeader Read(ReadOnlySpan<byte> s) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(s),
        BinaryPrimitives.ReadUInt32LittleEndian(s[4..]),
        BinaryPrimitives.ReadUInt32LittleEndian(s[8..]));

    public void Write(Span<byte> s)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(s, Offset);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], Size);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], Flags);
    }
}

/// <summary>Vring-file payload (SET_VRING_KICK/CALL/ERR): bits 0–7 index, bit 8 = no descriptor.</summary>
public static class VringFile
{
    public const ulong IndexMask = 0xff;
    public const ulong NoFdFlag = 0x100;

    public static ulong Encode(uint index, bool noFd) => index | (noFd ? NoFdFlag : 0);

    /// <summary>Why the value is malformed (bits above 8 set), or null.</summary>
    public static string? Problem(ulong value) =>
        (value & ~(IndexMask | NoFdFlag)) != 0 ? $"reserved bits set in vring file value 0x{value:x}" : null;
}

/// <summary>
/// SET_DEVICE_STATE_FD's payload: u32 transfer_direction (0 save: the back end writes its state into
/// the descriptor; 1 load: it reads one from it); u32 migration_phase (0 = stopped, the only one).
/// The reply is a u64: bits 0–7 an error (0 = accepted), bit 8 set when the back end returns no
/// descriptor of its own (the front end then uses the one it sent).
/// </summary>
public readonly record struct DeviceStateTransfer(uint Direction, uint Phase)
{
    public const int Size = 8;
    public const uint Save = 0, Load = 1, PhaseStopped = 0;
    public const ulong NoFdReturned = 1UL << 8;

    public static DeviceStateTransfer Read(ReadOnlySpan<byte> s) =>
        new(BinaryPrimitives.ReadUInt32LittleEndian(s), BinaryPrimitives.ReadUInt32LittleEndian(s[4..]));

    public void Write(Span<byte> s)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(s, Direction);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], Phase);
    }
}

/// <summary>
/// GET_INFLIGHT_FD / SET_INFLIGHT_FD (INFLIGHT_SHMFD): the inflight buffer's size and offset in its
/// descriptor, and the queues it covers. Not packed in QEMU, libvhost-user and rust-vmm: two bytes
/// of tail padding make it 24. In a GET request only the queue fields count.
/// </summary>
public readonly record struct InflightPayload(ulong MmapSize, ulong MmapOffset, ushort NumQueues, ushort QueueSize)
{
    public const int Size = 24;

    public static InflightPayload Read(ReadOnlySpan<byte> s) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(s),
        BinaryPrimitives.ReadUInt64LittleEndian(s[8..]),
        BinaryPrimitives.ReadUInt16LittleEndian(s[16..]),
        BinaryPrimitives.ReadUInt16LittleEndian(s[18..]));

    public void Write(Span<byte> s)
    {
        s[..Size].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(s, MmapSize);
        BinaryPrimitives.WriteUInt64LittleEndian(s[8..], MmapOffset);
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], NumQueues);
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], QueueSize);
    }

    public byte[] ToArray()
    {
        var bytes = new byte[Size];
        Write(bytes);
        return bytes;
    }
}
