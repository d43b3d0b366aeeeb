using System.Runtime.InteropServices;

namespace VhostUserVirtio.Interop;

/// <summary>A failed system call, with the errno and the call that set it.</summary>
public sealed class NativeException : IOException
{
    public NativeException(string call, int errno)
        : base($"{call} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})")
    {
        Call = call;
        Errno = errno;
    }

    public string Call { get; }
    public int Errno { get; }

    public bool IsWouldBlock => Errno == Libc.EAGAIN;

    /// <summary>connect() to a Unix socket found no listener: the path is missing, or its socket is left over from a process that is gone.</summary>
    public bool IsNoListener => Errno is Libc.ENOENT or Libc.ECONNREFUSED;

    /// <summary>The peer closed the connection under us (reset, or a write after its close).</summary>
    public bool IsPeerGone => Errno is Libc.ECONNRESET or Libc.EPIPE;

    internal static NativeException FromLastError(string call) => new(call, Libc.Errno);

    internal static int Check(int result, string call) => result < 0 ? throw FromLastError(call) : result;
}
