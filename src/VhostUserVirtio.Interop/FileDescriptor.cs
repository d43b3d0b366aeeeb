using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;

namespace VhostUserVirtio.Interop;

/// <summary>
/// Sole owner of one Linux file descriptor: closed exactly once, by Dispose or by the finalizer.
/// Every descriptor received over a socket is wrapped in one of these the moment it arrives.
/// </summary>
public sealed class FileDescriptor : SafeHandle
{
    public FileDescriptor(int fd) : base(new IntPtr(-1), ownsHandle: true) => SetHandle(new IntPtr(fd));

    private FileDescriptor() : base(new IntPtr(-1), ownsHandle: true) { }

    public override bool IsInvalid => handle == new IntPtr(-1);

    /// <summary>The raw number, for logging and for passing to native calls while this object is alive.</summary>
    public int Number => (int)handle;

    protected override bool ReleaseHandle() => Libc.Close((int)handle) == 0;

    /// <summary>
    /// A second descriptor for the same open file (fcntl F_DUPFD_CLOEXEC, so it stays close-on-exec
    /// like every other descriptor here). Lets one owner keep a file while handing a copy to an API
    /// that consumes descriptors, e.g. mapping the same memfd on both sides in one process.
    /// </summary>
    public FileDescriptor Duplicate() =>
        new(NativeException.Check(Libc.Fcntl(Number, Libc.F_DUPFD_CLOEXEC, 0), "fcntl(F_DUPFD_CLOEXEC)"));

    /// <summary>Gives ownership up: returns the raw number, which this object will no longer close.</summary>
    public int Release()
    {
        int number = Number;
        SetHandleAsInvalid();
        return number;
    }

    /// <summary>Size of the file in bytes (fstat st_size).</summary>
    public long GetFileSize() => GetStatus().Size;

    /// <summary>fstat: size, preferred block size and type of the file.</summary>
    public unsafe FileStatus GetStatus()
    {
        Libc.StatBuffer st;
        NativeException.Check(Libc.Fstat(Number, &st), "fstat");
        return new FileStatus(st.Size, st.BlockSize, st.Mode);
    }

    /// <summary>Sets the file's size (ftruncate). Fails with EPERM on a memfd sealed against the change.</summary>
    public void SetLength(long length) => NativeException.Check(Libc.Ftruncate(Number, length), "ftruncate");

    /// <summary>Clears or sets close-on-exec, e.g. to hand a listening socket to a child process (libvirt's --fd).</summary>
    public void SetInheritable(bool inheritable) =>
        NativeException.Check(Libc.Fcntl(Number, Libc.F_SETFD, inheritable ? 0 : Libc.FD_CLOEXEC), "fcntl(F_SETFD)");

    /// <summary>Sets or clears O_NONBLOCK.</summary>
    public void SetNonBlocking(bool nonBlocking)
    {
        int flags = NativeException.Check(Libc.Fcntl(Number, Libc.F_GETFL, 0), "fcntl(F_GETFL)");
        flags = nonBlocking ? flags | Libc.O_NONBLOCK : flags & ~Libc.O_NONBLOCK;
        NativeException.Check(Libc.Fcntl(Number, Libc.F_SETFL, flags), "fcntl(F_SETFL)");
    }

    /// <summary>
    /// Makes sure a shared-memory file can no longer shrink under a mapping (a shrink would turn later
    /// accesses into SIGBUS); a file already sealed so counts (QEMU's memfd backend seals with
    /// F_SEAL_SEAL too, so adding would fail). False when the file cannot be sealed, with the reason:
    /// only memfds take seals, and only those made with MFD_ALLOW_SEALING.
    /// </summary>
    public bool TrySealAgainstShrink([NotNullWhen(false)] out string? reason)
    {
        reason = null;
        if (IsSealedAgainstShrink)
            return true;
        if (Libc.Fcntl(Number, Libc.F_ADD_SEALS, Libc.F_SEAL_SHRINK) == 0)
            return true;
        int errno = Libc.Errno;
        // Someone else may have sealed it meanwhile, F_SEAL_SEAL included.
        if (IsSealedAgainstShrink)
            return true;
        int seals = Libc.Fcntl(Number, Libc.F_GET_SEALS, 0);
        reason = errno switch
        {
            Libc.EINVAL => "its file type cannot be sealed (only memfds can)",
            Libc.EPERM when seals > Libc.F_SEAL_SEAL => "its file was sealed (F_SEAL_SEAL) without F_SEAL_SHRINK",
            Libc.EPERM => "its file takes no seals (a memfd created without MFD_ALLOW_SEALING, or a tmpfs or hugetlbfs file that is not a memfd)",
            _ => new NativeException("fcntl(F_ADD_SEALS)", errno).Message,
        };
        return false;
    }

    /// <summary>True when the file carries F_SEAL_SHRINK: it can never again be smaller than it is now.</summary>
    public bool IsSealedAgainstShrink
    {
        get
        {
            int seals = Libc.Fcntl(Number, Libc.F_GET_SEALS, 0);
            return seals >= 0 && (seals & Libc.F_SEAL_SHRINK) != 0;
        }
    }

    /// <summary>What the kernel says this descriptor is (readlink of /proc/self/fd/N): "pipe:[123]",
    /// "socket:[456]", "anon_inode:[eventfd]", a path… Null if it cannot be read.</summary>
    public unsafe string? KernelName()
    {
        const int Size = 256;
        byte* buf = stackalloc byte[Size];
        nint n = Libc.Readlink($"/proc/self/fd/{Number}", buf, Size);
        return n < 0 ? null : System.Text.Encoding.UTF8.GetString(buf, (int)n);
    }

    /// <summary>
    /// Whether this is an eventfd. The kernel names every eventfd "anon_inode:[eventfd]"; nothing a
    /// peer can create or name looks like that (files are paths, pipes and sockets are "pipe:[N]" and
    /// "socket:[N]", other anonymous inodes carry their own names).
    /// </summary>
    public bool IsEventFd() => KernelName() == "anon_inode:[eventfd]";

    /// <summary>Waits until the descriptor is readable (or hung up). Returns false on timeout.</summary>
    public unsafe bool WaitReadable(int timeoutMs) => PollFor(1, timeoutMs);

    /// <summary>Waits until the descriptor is writable. Returns false on timeout.</summary>
    public unsafe bool WaitWritable(int timeoutMs) => PollFor(4, timeoutMs);

    private unsafe bool PollFor(short events, int timeoutMs)
    {
        var pfd = new Libc.PollFd { Fd = Number, Events = events };
        while (true)
        {
            int r = Libc.Poll(&pfd, 1, timeoutMs);
            if (r >= 0)
                return r > 0;
            if (Libc.Errno != Libc.EINTR)
                throw NativeException.FromLastError("poll");
        }
    }
}

/// <summary>What fstat says about a file.</summary>
/// <param name="BlockSize">st_blksize: the preferred I/O (and mapping) granule; hugetlbfs reports its huge page size here.</param>
public readonly record struct FileStatus(long Size, long BlockSize, uint Mode);

/// <summary>
/// Reads and writes on a pipe or socket a peer supplied, never waiting whatever the peer does to its
/// flags (RWF_NOWAIT: pipes honour it on writes and reads alike, unlike eventfd writes).
/// </summary>
public static unsafe class PeerStream
{
    /// <summary>A pipe (close-on-exec, blocking), e.g. for a device state transfer: (read end, write end).</summary>
    public static (FileDescriptor Read, FileDescriptor Write) CreatePipe()
    {
        int* fds = stackalloc int[2];
        NativeException.Check(Libc.Pipe2(fds, Libc.O_CLOEXEC), "pipe2");
        return (new FileDescriptor(fds[0]), new FileDescriptor(fds[1]));
    }

    /// <summary>Bytes written, 0 when the peer's end has no room now, -1 when it is gone or refuses.</summary>
    public static int TryWrite(FileDescriptor fd, ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
        {
            var iov = new Libc.IoVec { Base = p, Length = (nuint)data.Length };
            while (true)
            {
                nint r = Libc.Pwritev2(fd.Number, &iov, 1, -1, Libc.RWF_NOWAIT);
                if (r >= 0)
                    return (int)r;
                int errno = Libc.Errno;
                if (errno == Libc.EINTR)
                    continue;
                return errno == Libc.EAGAIN ? 0 : -1;
            }
        }
    }

    /// <summary>Bytes read, 0 at end of stream, -2 when nothing is there now, -1 on an error.</summary>
    public static int TryRead(FileDescriptor fd, Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            var iov = new Libc.IoVec { Base = p, Length = (nuint)buffer.Length };
            while (true)
            {
                nint r = Libc.Preadv2(fd.Number, &iov, 1, -1, Libc.RWF_NOWAIT);
                if (r >= 0)
                    return (int)r;
                int errno = Libc.Errno;
                if (errno == Libc.EINTR)
                    continue;
                return errno == Libc.EAGAIN ? -2 : -1;
            }
        }
    }
}
