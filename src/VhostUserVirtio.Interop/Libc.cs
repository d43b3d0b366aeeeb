using System.Runtime.InteropServices;

namespace VhostUserVirtio.Interop;

/// <summary>
/// Raw libc entry points (x86_64 Linux ABI). Kept internal: callers go through the typed wrappers
/// in this assembly, which check results and own the descriptors.
/// </summary>
internal static unsafe partial class Libc
{
    private const string Lib = "libc";

    [LibraryImport(Lib, EntryPoint = "gettid")]
    internal static partial int GetTid();

    [LibraryImport(Lib, EntryPoint = "sched_setaffinity", SetLastError = true)]
    internal static partial int SchedSetAffinity(int pid, nuint size, ulong* mask);

    [LibraryImport(Lib, EntryPoint = "sched_getaffinity", SetLastError = true)]
    internal static partial int SchedGetAffinity(int pid, nuint size, ulong* mask);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    internal static partial int Close(int fd);

    [LibraryImport(Lib, EntryPoint = "read", SetLastError = true)]
    internal static partial nint Read(int fd, void* buf, nuint count);

    [LibraryImport(Lib, EntryPoint = "write", SetLastError = true)]
    internal static partial nint Write(int fd, void* buf, nuint count);

    [LibraryImport(Lib, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int MemfdCreate(string name, uint flags);

    [LibraryImport(Lib, EntryPoint = "ftruncate", SetLastError = true)]
    internal static partial int Ftruncate(int fd, long length);

    [LibraryImport(Lib, EntryPoint = "fstat", SetLastError = true)]
    internal static partial int Fstat(int fd, StatBuffer* buf);

    [LibraryImport(Lib, EntryPoint = "lstat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Lstat(string path, StatBuffer* buf);

    [LibraryImport(Lib, EntryPoint = "rename", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Rename(string from, string to);

    [LibraryImport(Lib, EntryPoint = "fcntl", SetLastError = true)]
    internal static partial int Fcntl(int fd, int cmd, int arg);

    [LibraryImport(Lib, EntryPoint = "mmap", SetLastError = true)]
    internal static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport(Lib, EntryPoint = "munmap", SetLastError = true)]
    internal static partial int Munmap(nint addr, nuint length);

    [LibraryImport(Lib, EntryPoint = "eventfd", SetLastError = true)]
    internal static partial int EventFd(uint initval, int flags);

    [LibraryImport(Lib, EntryPoint = "epoll_create1", SetLastError = true)]
    internal static partial int EpollCreate1(int flags);

    [LibraryImport(Lib, EntryPoint = "epoll_ctl", SetLastError = true)]
    internal static partial int EpollCtl(int epfd, int op, int fd, EpollEvent* ev);

    [LibraryImport(Lib, EntryPoint = "epoll_wait", SetLastError = true)]
    internal static partial int EpollWait(int epfd, EpollEvent* events, int maxevents, int timeout);

    [LibraryImport(Lib, EntryPoint = "poll", SetLastError = true)]
    internal static partial int Poll(PollFd* fds, nuint nfds, int timeout);

    [LibraryImport(Lib, EntryPoint = "kill", SetLastError = true)]
    internal static partial int Kill(int pid, int signal);

    [LibraryImport(Lib, EntryPoint = "getuid")]
    internal static partial uint GetUid();

    [LibraryImport(Lib, EntryPoint = "socket", SetLastError = true)]
    internal static partial int Socket(int domain, int type, int protocol);

    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Open(string path, int flags);

    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    internal static partial int Ioctl(int fd, ulong request, void* arg);

    [LibraryImport(Lib, EntryPoint = "socketpair", SetLastError = true)]
    internal static partial int SocketPair(int domain, int type, int protocol, int* sv);

    [LibraryImport(Lib, EntryPoint = "bind", SetLastError = true)]
    internal static partial int Bind(int fd, void* addr, uint addrlen);

    [LibraryImport(Lib, EntryPoint = "listen", SetLastError = true)]
    internal static partial int Listen(int fd, int backlog);

    [LibraryImport(Lib, EntryPoint = "accept4", SetLastError = true)]
    internal static partial int Accept4(int fd, void* addr, void* addrlen, int flags);

    [LibraryImport(Lib, EntryPoint = "connect", SetLastError = true)]
    internal static partial int Connect(int fd, void* addr, uint addrlen);

    [LibraryImport(Lib, EntryPoint = "getsockopt", SetLastError = true)]
    internal static partial int Getsockopt(int fd, int level, int name, void* value, uint* length);

    [LibraryImport(Lib, EntryPoint = "shutdown", SetLastError = true)]
    internal static partial int Shutdown(int fd, int how);

    [LibraryImport(Lib, EntryPoint = "sendmsg", SetLastError = true)]
    internal static partial nint SendMsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport(Lib, EntryPoint = "recvmsg", SetLastError = true)]
    internal static partial nint RecvMsg(int fd, MsgHdr* msg, int flags);

    // Constants (Linux, x86_64 / generic).
    internal const int EINTR = 4;
    internal const int O_RDWR = 2;
    internal const int O_CLOEXEC = 0x80000;
    internal const ulong TUNSETIFF = 0x400454ca;
    internal const ulong SIOCGIFFLAGS = 0x8913;
    internal const ulong SIOCSIFFLAGS = 0x8914;
    internal const ulong SIOCGIFMTU = 0x8921;
    internal const ulong SIOCSIFMTU = 0x8922;
    internal const short IFF_UP = 0x1;
    internal const short IFF_TAP = 0x2;
    internal const short IFF_NO_PI = 0x1000;
    internal const int AF_INET = 2;
    internal const int SOCK_DGRAM = 2;
    internal const int EAGAIN = 11;

    internal const uint MFD_CLOEXEC = 0x1;
    internal const uint MFD_ALLOW_SEALING = 0x2;
    internal const int F_GETFL = 3;
    internal const int F_SETFL = 4;
    internal const int F_DUPFD_CLOEXEC = 1030;
    internal const int F_SETFD = 2;
    internal const int FD_CLOEXEC = 1;
    internal const int O_NONBLOCK = 0x800;

    // Guest memory files: sealing (memfd) and the errno values that explain why a file cannot be sealed.
    internal const int F_ADD_SEALS = 1033;
    internal const int F_GET_SEALS = 1034;
    internal const int F_SEAL_SEAL = 0x1;
    internal const int F_SEAL_SHRINK = 0x2;
    internal const int EPERM = 1;
    internal const int ESRCH = 3;
    internal const int EINVAL = 22;
    // Why a TAP cannot be opened, and how a Unix socket's peer can be missing or gone.
    internal const int ENOENT = 2;
    internal const int EACCES = 13;
    internal const int EPIPE = 32;
    internal const int ECONNRESET = 104;
    internal const int ECONNREFUSED = 111;

    internal const int PROT_READ = 0x1;
    internal const int PROT_WRITE = 0x2;
    internal const int MAP_SHARED = 0x1;
    internal const int MAP_NORESERVE = 0x4000;

    internal const int EFD_CLOEXEC = 0x80000;
    internal const int EFD_NONBLOCK = 0x800;
    internal const int EPOLL_CLOEXEC = 0x80000;
    internal const int EPOLL_CTL_ADD = 1;
    internal const int EPOLL_CTL_DEL = 2;
    internal const int EPOLL_CTL_MOD = 3;

    internal const int AF_UNIX = 1;
    internal const int SOCK_STREAM = 1;
    internal const int SOCK_SEQPACKET = 5;
    internal const int SOCK_NONBLOCK = 0x800;
    internal const int SOCK_CLOEXEC = 0x80000;
    internal const int SOL_SOCKET = 1;
    internal const int SCM_RIGHTS = 1;
    internal const int SO_TYPE = 3;
    internal const int SO_PEERCRED = 17;
    internal const int SO_ACCEPTCONN = 30;
    internal const int SO_DOMAIN = 39;
    internal const uint S_IFMT = 0xF000;
    internal const uint S_IFSOCK = 0xC000;
    internal const int MSG_CTRUNC = 0x8;
    internal const int MSG_DONTWAIT = 0x40;
    internal const int MSG_NOSIGNAL = 0x4000;
    internal const int MSG_CMSG_CLOEXEC = 0x40000000;
    internal const int SHUT_RDWR = 2;

    // ---- Descriptors a peer supplies: what they are, and eventfd I/O that never blocks ----

    [LibraryImport(Lib, EntryPoint = "readlink", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial nint Readlink(string path, byte* buf, nuint size);

    [LibraryImport(Lib, EntryPoint = "preadv2", SetLastError = true)]
    internal static partial nint Preadv2(int fd, IoVec* iov, int iovcnt, long offset, int flags);

    [LibraryImport(Lib, EntryPoint = "pipe2", SetLastError = true)]
    internal static partial int Pipe2(int* fds, int flags);

    [LibraryImport(Lib, EntryPoint = "pwritev2", SetLastError = true)]
    internal static partial nint Pwritev2(int fd, IoVec* iov, int iovcnt, long offset, int flags);

    /// <summary>syscall(2) for the Linux AIO calls, which glibc does not wrap.</summary>
    [LibraryImport(Lib, EntryPoint = "syscall", SetLastError = true)]
    internal static partial long Syscall(long number, long a1, long a2, long a3);

    [LibraryImport(Lib, EntryPoint = "syscall", SetLastError = true)]
    internal static partial long Syscall(long number, long a1, long a2, long a3, long a4, long a5);

    /// <summary>Numbers of io_setup, io_submit and io_getevents on this architecture; null where not known.</summary>
    internal static (long Setup, long Submit, long GetEvents)? AioSyscalls => RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => (206, 209, 208),
        Architecture.Arm64 => (0, 2, 4),
        _ => null,
    };

    internal const int EOPNOTSUPP = 95;
    internal const int EFD_SEMAPHORE = 0x1;
    internal const int RWF_NOWAIT = 0x8;
    internal const short POLLIN = 0x1;
    internal const short POLLOUT = 0x4;
    internal const ushort IOCB_CMD_POLL = 5;
    internal const uint IOCB_FLAG_RESFD = 0x1;

    /// <summary>struct iocb (64 bytes, little endian: aio_key before aio_rw_flags).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 64)]
    internal struct IoCb
    {
        [FieldOffset(0)] public ulong Data;
        [FieldOffset(16)] public ushort Opcode;
        [FieldOffset(20)] public uint FileDescriptor;
        [FieldOffset(24)] public ulong Buffer;
        [FieldOffset(56)] public uint Flags;
        [FieldOffset(60)] public uint ResultFd;
    }

    /// <summary>struct io_event (32 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct IoEvent
    {
        public ulong Data;
        public ulong Object;
        public long Result;
        public long Result2;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [StructLayout(LayoutKind.Sequential, Pack = 4)]
    internal struct EpollEvent
    {
        public uint Events;
        public ulong Data;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct PollFd
    {
        public int Fd;
        public short Events;
        public short REvents;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct CmsgHdr
    {
        public nuint Length;
        public int Level;
        public int Type;
    }

    /// <summary>struct stat on x86_64: 144 bytes; st_dev at 0, st_ino at 8, st_size at 48, st_blksize at 56.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 144)]
    internal struct StatBuffer
    {
        [FieldOffset(0)] public ulong Device;
        [FieldOffset(8)] public ulong Inode;
        [FieldOffset(24)] public uint Mode;
        [FieldOffset(28)] public uint Uid;
        [FieldOffset(32)] public uint Gid;
        [FieldOffset(48)] public long Size;
        [FieldOffset(56)] public long BlockSize;
    }

    internal static int Errno => Marshal.GetLastPInvokeError();
}
