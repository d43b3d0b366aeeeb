using System.Runtime.InteropServices;

namespace VhostUserVirtio.Interop;

/// <summary>File ownership and modes, and group lookup (for <see cref="SocketAccess"/>).</summary>
internal static unsafe partial class Libc
{
    internal const int O_RDONLY = 0;
    internal const int O_DIRECTORY = 0x10000;
    internal const int O_NOFOLLOW = 0x20000;

    // lchown: a socket file is changed through its path (fchown on a socket descriptor changes the
    // socket, not the file that connect() checks), and a symlink planted there is not followed.
    [LibraryImport(Lib, EntryPoint = "lchown", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Lchown(string path, uint owner, uint group);

    [LibraryImport(Lib, EntryPoint = "chmod", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Chmod(string path, uint mode);

    [LibraryImport(Lib, EntryPoint = "fchown", SetLastError = true)]
    internal static partial int Fchown(int fd, uint owner, uint group);

    [LibraryImport(Lib, EntryPoint = "fchmod", SetLastError = true)]
    internal static partial int Fchmod(int fd, uint mode);

    /// <summary>struct group*, or null; its gr_gid follows gr_name and gr_passwd (two pointers).</summary>
    [LibraryImport(Lib, EntryPoint = "getgrnam", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial nint Getgrnam(string name);
}
