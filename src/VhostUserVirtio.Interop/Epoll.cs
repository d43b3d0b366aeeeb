namespace VhostUserVirtio.Interop;

[Flags]
public enum EpollEvents : uint
{
    None = 0,
    In = 0x1,
    Out = 0x4,
    Error = 0x8,
    HangUp = 0x10,
    ReadHangUp = 0x2000,
}

/// <summary>One readiness report: which registration (its token) and what happened.</summary>
public readonly record struct EpollReady(ulong Token, EpollEvents Events);

/// <summary>An epoll instance. Registrations are identified by a caller-chosen 64-bit token.</summary>
public sealed unsafe class Epoll : IDisposable
{
    private readonly FileDescriptor _epfd =
        new(NativeException.Check(Libc.EpollCreate1(Libc.EPOLL_CLOEXEC), "epoll_create1"));
    private readonly Libc.EpollEvent[] _buffer;

    public Epoll(int maxEventsPerWait = 64) => _buffer = new Libc.EpollEvent[maxEventsPerWait];

    public void Add(FileDescriptor fd, EpollEvents events, ulong token) => Control(Libc.EPOLL_CTL_ADD, fd, events, token);

    public void Modify(FileDescriptor fd, EpollEvents events, ulong token) => Control(Libc.EPOLL_CTL_MOD, fd, events, token);

    /// <summary>Removes a registration; a descriptor that was never added (or is closed) is ignored.</summary>
    public void Remove(FileDescriptor fd)
    {
        if (fd.IsClosed)
            return;
        var ev = default(Libc.EpollEvent);
        Libc.EpollCtl(_epfd.Number, Libc.EPOLL_CTL_DEL, fd.Number, &ev);
    }

    private void Control(int op, FileDescriptor fd, EpollEvents events, ulong token)
    {
        var ev = new Libc.EpollEvent { Events = (uint)events, Data = token };
        NativeException.Check(Libc.EpollCtl(_epfd.Number, op, fd.Number, &ev), "epoll_ctl");
    }

    /// <summary>
    /// Waits for readiness and writes the reports into <paramref name="ready"/>. Returns how many.
    /// An interrupted wait returns 0. Allocates nothing.
    /// </summary>
    public int Wait(Span<EpollReady> ready, int timeoutMs)
    {
        int max = Math.Min(ready.Length, _buffer.Length);
        int n;
        fixed (Libc.EpollEvent* p = _buffer)
            n = Libc.EpollWait(_epfd.Number, p, max, timeoutMs);
        if (n < 0)
        {
            if (Libc.Errno == Libc.EINTR)
                return 0;
            throw NativeException.FromLastError("epoll_wait");
        }
        for (int i = 0; i < n; i++)
            ready[i] = new EpollReady(_buffer[i].Data, (EpollEvents)_buffer[i].Events);
        return n;
    }

    public void Dispose() => _epfd.Dispose();
}
