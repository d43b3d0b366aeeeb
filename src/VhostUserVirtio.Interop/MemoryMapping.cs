using System.Runtime.InteropServices;

namespace VhostUserVirtio.Interop;

/// <summary>
/// A MAP_SHARED mapping of a file, unmapped exactly once. The base pointer stays valid until Dispose;
/// whoever hands out spans over it must guarantee nobody uses them after that.
/// </summary>
public sealed class MemoryMapping : SafeHandle
{
    private MemoryMapping(nint address, nuint length) : base(IntPtr.Zero, ownsHandle: true)
    {
        SetHandle(address);
        Length = length;
    }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public nint Address => handle;
    public nuint Length { get; }

    /// <summary>
    /// Maps <paramref name="length"/> bytes of <paramref name="fd"/> from file offset
    /// <paramref name="offset"/>, read-write, shared, without reserving swap. The offset must be a
    /// multiple of the page size (of the huge page size on hugetlbfs), or mmap fails with EINVAL.
    /// </summary>
    public static MemoryMapping Map(FileDescriptor fd, ulong length, ulong offset = 0)
    {
        if (length == 0 || length > nuint.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(length), length, "mapping length out of range");
        if (offset > long.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(offset), offset, "file offset out of range");
        nint addr = Libc.Mmap(0, (nuint)length, Libc.PROT_READ | Libc.PROT_WRITE,
            Libc.MAP_SHARED | Libc.MAP_NORESERVE, fd.Number, (long)offset);
        if (addr == -1)
            throw NativeException.FromLastError("mmap");
        return new MemoryMapping(addr, (nuint)length);
    }

    protected override bool ReleaseHandle() => Libc.Munmap(handle, Length) == 0;
}
