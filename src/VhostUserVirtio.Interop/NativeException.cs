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

    internal static NativeException FromLastError(string call) => new(call, Libc.Errno);

    internal static int Check(int result, string call) => result < 0 ? throw FromLastError(call) : result;
}
