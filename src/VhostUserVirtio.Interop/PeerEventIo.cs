namespace VhostUserVirtio.Interop;

/// <summary>
/// Reads and writes eventfds that a peer supplied, without ever blocking, whatever the peer does
/// with them. O_NONBLOCK belongs to the open file description, which the peer shares: it can clear
/// it on its own copy at any moment, so flags we set prove nothing. And an eventfd blocks a writer
/// when its counter is full (0xfffffffffffffffe) and a reader when it is zero.
/// <list type="bullet">
/// <item>Reads use preadv2(RWF_NOWAIT): EAGAIN on an empty counter even on a blocking descriptor.</item>
/// <item>Writes cannot use RWF_NOWAIT (eventfd writes refuse it with EOPNOTSUPP). They go through the
/// kernel's own signal path instead, which never blocks and saturates a full counter: a Linux AIO poll
/// on a private, always-readable eventfd, submitted with IOCB_FLAG_RESFD and the peer's eventfd as
/// aio_resfd. The poll completes inside io_submit, and its completion signals the peer's eventfd
/// (eventfd_signal). About 1.2 µs against 0.45 µs for a plain write (completions reaped in batches).</item>
/// </list>
/// Kernels without these fall back to a poll-guarded non-blocking call, which a peer that clears
/// O_NONBLOCK between the poll and the call can still block; <see cref="FallbackReason"/> says so.
/// Thread-safe: one AIO context serves every thread (io_submit and io_getevents are).
/// </summary>
internal static unsafe class PeerEventIo
{
    /// <summary>Completions reaped in one io_getevents; also how many may pile up before a reap.</summary>
    private const int ReapBatch = 32;
    /// <summary>Ring size asked of io_setup: room for a batch from every thread with margin.</summary>
    private const int RingEvents = 256;

    private static readonly Lazy<Aio?> Context = new(Aio.TryCreate, LazyThreadSafetyMode.ExecutionAndPublication);
    private static volatile bool _readNoWaitUnsupported;
    private static string? _setupFailure;

    /// <summary>Why peer eventfds are served by the poll-guarded fallback, or null when they are not.</summary>
    public static string? FallbackReason
    {
        get
        {
            _ = Context.Value;
            string? reason = _setupFailure;
            if (_readNoWaitUnsupported)
                reason = (reason == null ? "" : reason + "; ") + "preadv2(RWF_NOWAIT) is not supported on eventfds";
            return reason;
        }
    }

    /// <summary>Adds one to a peer's eventfd counter. False when the kernel refused (never waits).</summary>
    public static bool Signal(int fd)
    {
        if (Context.Value is { } aio)
            return aio.Signal(fd);
        return GuardedWrite(fd);
    }

    /// <summary>Reads and clears a peer's eventfd counter; 0 when it was zero (never waits).</summary>
    public static ulong Drain(int fd)
    {
        ulong value = 0;
        var iov = new Libc.IoVec { Base = &value, Length = 8 };
        while (!_readNoWaitUnsupported)
        {
            nint r = Libc.Preadv2(fd, &iov, 1, -1, Libc.RWF_NOWAIT);
            if (r == 8)
                return value;
            int errno = r < 0 ? Libc.Errno : 0;
            if (errno == Libc.EINTR)
                continue;
            if (errno != Libc.EOPNOTSUPP)
                return 0;
            _readNoWaitUnsupported = true;
        }
        if (!Ready(fd, Libc.POLLIN))
            return 0;
        return Libc.Read(fd, &value, 8) == 8 ? value : 0;
    }

    private static bool GuardedWrite(int fd)
    {
        if (!Ready(fd, Libc.POLLOUT))
            return false;
        ulong one = 1;
        return Libc.Write(fd, &one, 8) == 8;
    }

    private static bool Ready(int fd, short events)
    {
        var pfd = new Libc.PollFd { Fd = fd, Events = events };
        int r;
        do
            r = Libc.Poll(&pfd, 1, 0);
        while (r < 0 && Libc.Errno == Libc.EINTR);
        return r > 0 && (pfd.REvents & events) != 0;
    }

    private sealed class Aio
    {
        private readonly ulong _context;
        private readonly FileDescriptor _alwaysReadable;
        private readonly (long Setup, long Submit, long GetEvents) _calls;
        private int _unreaped;

        private Aio(ulong context, FileDescriptor alwaysReadable, (long, long, long) calls)
        {
            _context = context;
            _alwaysReadable = alwaysReadable;
            _calls = calls;
        }

        public static Aio? TryCreate()
        {
            if (Libc.AioSyscalls is not { } calls)
            {
                _setupFailure = "Linux AIO system call numbers are not known on this architecture";
                return null;
            }
            // Counter 1, never read: a poll for POLLIN on it is always ready at once.
            int ready = Libc.EventFd(1, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK);
            if (ready < 0)
            {
                _setupFailure = $"eventfd failed (errno {Libc.Errno})";
                return null;
            }
            ulong context = 0;
            if (Libc.Syscall(calls.Setup, RingEvents, (long)&context, 0) != 0)
            {
                _setupFailure = $"io_setup failed (errno {Libc.Errno})";
                Libc.Close(ready);
                return null;
            }
            // Deliberately never destroyed: it lives as long as the process.
            return new Aio(context, new FileDescriptor(ready), calls);
        }

        public bool Signal(int fd)
        {
            var cb = new Libc.IoCb
            {
                Opcode = Libc.IOCB_CMD_POLL,
                FileDescriptor = (uint)_alwaysReadable.Number,
                Buffer = (ulong)Libc.POLLIN,
                Flags = Libc.IOCB_FLAG_RESFD,
                ResultFd = (uint)fd,
            };
            Libc.IoCb* list = &cb;
            bool reaped = false;
            while (true)
            {
                long r = Libc.Syscall(_calls.Submit, (long)_context, 1, (long)&list);
                if (r == 1)
                {
                    if (Interlocked.Increment(ref _unreaped) >= ReapBatch)
                        Reap();
                    return true;
                }
                int errno = Libc.Errno;
                if (errno == Libc.EINTR)
                    continue;
                // EAGAIN: the ring is full of completions other threads have not reaped yet.
                if (errno == Libc.EAGAIN && !reaped)
                {
                    Reap();
                    reaped = true;
                    continue;
                }
                return false;
            }
        }

        /// <summary>Takes whatever completions are there; never waits.</summary>
        private void Reap()
        {
            Libc.IoEvent* events = stackalloc Libc.IoEvent[ReapBatch];
            var zero = new Libc.TimeSpec();
            while (true)
            {
                long n = Libc.Syscall(_calls.GetEvents, (long)_context, 0, ReapBatch, (long)events, (long)&zero);
                if (n < 0 && Libc.Errno == Libc.EINTR)
                    continue;
                if (n <= 0)
                    return;
                Interlocked.Add(ref _unreaped, -(int)n);
                if (n < ReapBatch)
                    return;
            }
        }
    }
}
