using System.Runtime.InteropServices;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Tests.Support;

/// <summary>Kinds of descriptor a hostile front end hands over where the protocol expects an eventfd or a memfd.</summary>
public enum FdKind
{
    /// <summary>Its guest RAM region A or B (what a QEMU would send).</summary>
    RamA,
    RamB,
    /// <summary>A new memfd of the spec's size (sealable, as QEMU's).</summary>
    FreshMemFd,
    /// <summary>A one-page memfd, too small for most regions.</summary>
    SmallMemFd,
    /// <summary>A non-blocking eventfd the front end keeps and signals (a doorbell).</summary>
    EventFd,
    /// <summary>A blocking eventfd whose counter is at its maximum: one more write blocks.</summary>
    SaturatedEventFd,
    /// <summary>The read end of a pipe whose writer stays open (never readable).</summary>
    PipeReadEnd,
    /// <summary>The read end of a pipe whose writer is closed (always readable: end of file).</summary>
    PipeReadEndAtEof,
    /// <summary>The write end of a blocking pipe nobody reads.</summary>
    PipeWriteEnd,
    /// <summary>The write end of a blocking pipe that is already full: one more write blocks.</summary>
    FullPipe,
    /// <summary>One end of a stream socket pair.</summary>
    Socket,
}

public readonly record struct FdSpec(FdKind Kind, long Size = 0)
{
    public override string ToString() => Size == 0 ? Kind.ToString() : $"{Kind}({Size})";
}

/// <summary>
/// Makes the descriptors a hostile message carries. The copies that are sent are closed right after
/// the send (the back end then holds the only reference); the far ends of pipes and sockets and the
/// doorbells stay open until <see cref="Dispose"/>, so a back end writing into them is not rescued
/// by an EPIPE.
/// </summary>
public sealed partial class HostileFds : IDisposable
{
    private readonly List<IDisposable> _kept = new();
    private readonly List<EventFd> _doorbells = new();

    /// <summary>Eventfds handed over and kept, to kick whatever the back end uses them for.</summary>
    public IReadOnlyList<EventFd> Doorbells => _doorbells;

    /// <summary>Creates the descriptors; the caller sends their numbers, then disposes the returned copies.</summary>
    public List<FileDescriptor> Make(IEnumerable<FdSpec> specs, HostileRam ram, bool keepDoorbells = true)
    {
        var sent = new List<FileDescriptor>();
        try
        {
            foreach (var spec in specs)
                sent.Add(Make(spec, ram, keepDoorbells));
            return sent;
        }
        catch
        {
            foreach (var fd in sent)
                fd.Dispose();
            throw;
        }
    }

    private FileDescriptor Make(FdSpec spec, HostileRam ram, bool keepDoorbells)
    {
        switch (spec.Kind)
        {
            case FdKind.RamA: return ram.RegionFd(0).Duplicate();
            case FdKind.RamB: return ram.RegionFd(1).Duplicate();
            case FdKind.FreshMemFd: return MemFd.Create("hostile-fresh", Math.Clamp(spec.Size, 1, 8 << 20));
            case FdKind.SmallMemFd: return MemFd.Create("hostile-small", 4096);
            case FdKind.EventFd:
            {
                var e = new EventFd();
                if (!keepDoorbells)
                    return e.Descriptor;
                _doorbells.Add(e);
                return e.Descriptor.Duplicate();
            }
            case FdKind.SaturatedEventFd:
            {
                var fd = new FileDescriptor(Check(EventFdCreate(0, EFD_CLOEXEC), "eventfd"));
                WriteCounter(fd, 0xffff_ffff_ffff_fffe);
                return fd;
            }
            case FdKind.PipeReadEnd:
            {
                var (read, write) = Pipe();
                _kept.Add(write);
                return read;
            }
            case FdKind.PipeReadEndAtEof:
            {
                var (read, write) = Pipe();
                write.Dispose();
                return read;
            }
            case FdKind.PipeWriteEnd:
            {
                var (read, write) = Pipe();
                _kept.Add(read);
                return write;
            }
            case FdKind.FullPipe:
            {
                var (read, write) = Pipe();
                _kept.Add(read);
                write.SetNonBlocking(true);
                var chunk = new byte[4096];
                while (WriteBytes(write, chunk) > 0) { }
                write.SetNonBlocking(false); // shared with the copy we send: its next write blocks
                return write;
            }
            case FdKind.Socket:
            {
                var (mine, theirs) = UnixSocket.CreatePair();
                _kept.Add(mine);
                return theirs.Descriptor;
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(spec), spec, null);
        }
    }

    /// <summary>Closes the descriptors this front end kept (the end of its connection).</summary>
    public void Dispose()
    {
        foreach (var d in _doorbells)
            d.Dispose();
        _doorbells.Clear();
        foreach (var k in _kept)
            k.Dispose();
        _kept.Clear();
    }

    // Test-only syscalls for descriptor kinds the Interop layer has no reason to make.
    private const int EFD_CLOEXEC = 0x80000;
    private const int O_CLOEXEC = 0x80000;
    private const uint MFD_CLOEXEC = 1;

    private static (FileDescriptor Read, FileDescriptor Write) Pipe()
    {
        Span<int> fds = stackalloc int[2];
        Check(Pipe2(ref MemoryMarshal.GetReference(fds), O_CLOEXEC), "pipe2");
        return (new FileDescriptor(fds[0]), new FileDescriptor(fds[1]));
    }

    private static unsafe void WriteCounter(FileDescriptor fd, ulong value)
    {
        if (Write(fd.Number, &value, 8) != 8)
            throw new InvalidOperationException($"eventfd write failed: errno {Marshal.GetLastPInvokeError()}");
    }

    private static unsafe nint WriteBytes(FileDescriptor fd, byte[] data)
    {
        fixed (byte* p = data)
            return Write(fd.Number, p, (nuint)data.Length);
    }

    /// <summary>A memfd created without MFD_ALLOW_SEALING: nobody can seal it against shrinking (like a file on tmpfs or hugetlbfs).</summary>
    public static FileDescriptor UnsealableMemFd(string name, long size)
    {
        var fd = new FileDescriptor(Check(MemfdCreate(name, MFD_CLOEXEC), "memfd_create"));
        if (Truncate(fd, size) is int errno and not 0)
        {
            fd.Dispose();
            throw new InvalidOperationException($"ftruncate failed: errno {errno}");
        }
        return fd;
    }

    /// <summary>Truncates a file (e.g. a memfd after handing it over). Returns 0 or the errno.</summary>
    public static int Truncate(FileDescriptor fd, long size) =>
        Ftruncate(fd.Number, size) == 0 ? 0 : Marshal.GetLastPInvokeError();

    private static int Check(int result, string what) =>
        result >= 0 ? result : throw new InvalidOperationException($"{what} failed: errno {Marshal.GetLastPInvokeError()}");

    [LibraryImport("libc", EntryPoint = "pipe2", SetLastError = true)]
    private static partial int Pipe2(ref int fds, int flags);

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    private static partial int EventFdCreate(uint initial, int flags);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static unsafe partial nint Write(int fd, void* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MemfdCreate(string name, uint flags);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    private static partial int Ftruncate(int fd, long length);
}
