namespace VhostUserVirtio.Interop;

/// <summary>Sending a signal to another process (kill(2)), for a supervisor passing SIGTERM on to its child.</summary>
public static class ProcessSignal
{
    public const int SigTerm = 15, SigInt = 2, SigKill = 9;

    /// <summary>Sends <paramref name="signal"/> to <paramref name="pid"/>; false when the process is gone.</summary>
    public static bool Send(int pid, int signal)
    {
        if (Libc.Kill(pid, signal) == 0)
            return true;
        int errno = Libc.Errno;
        return errno == Libc.ESRCH ? false : throw new NativeException("kill", errno);
    }
}
