namespace VhostUserVirtio.Interop;

/// <summary>Anonymous shared memory files (memfd_create), the kind QEMU passes for guest RAM.</summary>
public static class MemFd
{
    /// <summary>Creates a sealable memfd of the given size.</summary>
    public static FileDescriptor Create(string name, long size)
    {
        var fd = new FileDescriptor(NativeException.Check(
            Libc.MemfdCreate(name, Libc.MFD_CLOEXEC | Libc.MFD_ALLOW_SEALING), "memfd_create"));
        try
        {
            NativeException.Check(Libc.Ftruncate(fd.Number, size), "ftruncate");
            return fd;
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }
}
