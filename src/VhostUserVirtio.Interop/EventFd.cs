namespace VhostUserVirtio.Interop;

/// <summary>
/// An eventfd used as a doorbell (kick) or interrupt (call). Non-blocking: Drain never waits.
/// Wraps a descriptor it owns; received descriptors are adopted as-is.
/// </summary>
public sealed unsafe class EventFd : IDisposable
{
    public EventFd() : this(new FileDescriptor(NativeException.Check(
        Libc.EventFd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK), "eventfd")))
    {
    }

    /// <summary>Adopts a descriptor received from a peer (it may be an eventfd or a pipe end).</summary>
    public EventFd(FileDescriptor descriptor) => Descriptor = descriptor;

    public FileDescriptor Descriptor { get; }

    /// <summary>Adds one to the counter. Returns false if the write failed (peer closed it, counter full).</summary>
    public bool Signal()
    {
        ulong one = 1;
        while (true)
        {
            nint r = Libc.Write(Descriptor.Number, &one, 8);
            if (r == 8)
                return true;
            if (r < 0 && Libc.Errno == Libc.EINTR)
                continue;
            return false;
        }
    }

    /// <summary>Reads and clears the counter if it is set. Returns the count (0 when nothing was pending).</summary>
    public ulong Drain()
    {
        ulong value = 0;
        while (true)
        {
            nint r = Libc.Read(Descriptor.Number, &value, 8);
            if (r == 8)
                return value;
            if (r < 0 && Libc.Errno == Libc.EINTR)
                continue;
            return 0;
        }
    }

    /// <summary>Blocks until signalled or the timeout passes; consumes the signal. Returns false on timeout.</summary>
    public bool Wait(int timeoutMs)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while (true)
        {
            if (Drain() != 0)
                return true;
            long left = timeoutMs < 0 ? -1 : deadline - Environment.TickCount64;
            if (timeoutMs >= 0 && left <= 0)
                return false;
            Descriptor.WaitReadable((int)left);
        }
    }

    public void Dispose() => Descriptor.Dispose();
}
