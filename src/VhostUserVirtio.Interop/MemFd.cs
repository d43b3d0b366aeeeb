namespace VhostUserVirtio.Interop;

/// <summary>Anonymous shared memory files (memfd_create), the kind QEMU passes for guest RAM.</summary>
public static class MemFd
{
    /// <summary>
    /// Creates a memfd of the given size; sealable unless <paramref name="allowSealing"/> is false
    /// (as DPDK makes its --no-huge memory), in which case nobody can ever seal it.
    /// </summary>
    public static FileDescriptor Create(string name, long size, bool allowSealing = true)
    {
        var fd = new FileDescriptor(NativeException.Check(
            Libc.MemfdCreate(name, Libc.MFD_CLOEXEC | (allowSealing ? Libc.MFD_ALLOW_SEALING : 0)), "memfd_create"));
        try
        {
            fd.SetLength(size);
            return fd;
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }
}
