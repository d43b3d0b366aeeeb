namespace VhostUserVirtio.Interop;

/// <summary>
/// An eventfd used as a doorbell (kick) or interrupt (call). Either our own (created here,
/// non-blocking, plain read and write) or a peer's (<see cref="AdoptPeer"/>): checked to be an
/// eventfd when adopted, and read and written through <see cref="PeerEventIo"/>, which never
/// blocks whatever the peer does with its copy.
/// </summary>
public sealed unsafe class EventFd : IDisposable
{
    private readonly bool _peer;

    public EventFd() : this(new FileDescriptor(NativeException.Check(
        Libc.EventFd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK), "eventfd")), peer: false)
    {
    }

    /// <summary>
    /// A semaphore-mode eventfd (EFD_SEMAPHORE: each read takes one), blocking like the front end
    /// that plays a hostile peer in tests would make it; back ends refuse one from a peer.
    /// </summary>
    public static EventFd CreateSemaphore() => new(new FileDescriptor(NativeException.Check(
        Libc.EventFd(0, Libc.EFD_CLOEXEC | Libc.EFD_SEMAPHORE), "eventfd")), peer: false);

    private EventFd(FileDescriptor descriptor, bool peer)
    {
        Descriptor = descriptor;
        _peer = peer;
    }

    public FileDescriptor Descriptor { get; }

    /// <summary>Whether this eventfd came from a peer (then no call on it ever blocks).</summary>
    public bool IsPeer => _peer;

    /// <summary>
    /// Why I/O on peer eventfds falls back to poll-guarded calls on this kernel (a peer clearing
    /// O_NONBLOCK at the wrong moment could then block us), or null when it never blocks.
    /// </summary>
    public static string? PeerFallbackReason => PeerEventIo.FallbackReason;

    /// <summary>
    /// Takes ownership of a descriptor a peer sent as a kick, call or err descriptor. Returns null,
    /// with the reason in <paramref name="refusal"/>, when it is not a plain eventfd; the descriptor is
    /// then closed. A pipe, socket or file would be read and written with blocking calls the peer
    /// controls (a socket with SO_RCVLOWAT, a pipe whose writer closed and stays readable for ever),
    /// and a semaphore-mode eventfd is never cleared by a read.
    /// </summary>
    public static EventFd? AdoptPeer(FileDescriptor fd, out string? refusal)
    {
        string? name = fd.KernelName();
        if (name != "anon_inode:[eventfd]")
            refusal = $"the descriptor is {Describe(name)}, not an eventfd";
        else if (IsSemaphore(fd))
            refusal = "the descriptor is an eventfd in semaphore mode (EFD_SEMAPHORE), which a read never clears";
        else
            refusal = null;
        if (refusal != null)
        {
            fd.Dispose();
            return null;
        }
        // Only helps the fallback path: the peer can clear it again, which is why peer I/O does not rely on it.
        try { fd.SetNonBlocking(true); }
        catch (NativeException) { }
        return new EventFd(fd, peer: true);
    }

    private static string Describe(string? name) => name switch
    {
        null => "unidentifiable",
        _ when name.StartsWith("pipe:", StringComparison.Ordinal) => $"a pipe ({name})",
        _ when name.StartsWith("socket:", StringComparison.Ordinal) => $"a socket ({name})",
        _ when name.StartsWith('/') => $"a file or device ({Printable(name)})",
        _ => $"'{Printable(name)}'",
    };

    /// <summary>A peer chose the path: keep it to one short line in logs.</summary>
    private static string Printable(string text)
    {
        var chars = text.Length > 80 ? text[..80].ToCharArray() : text.ToCharArray();
        for (int i = 0; i < chars.Length; i++)
            if (char.IsControl(chars[i]))
                chars[i] = '?';
        return text.Length > 80 ? new string(chars) + "…" : new string(chars);
    }

    /// <summary>Reads the mode from /proc/self/fdinfo (kernels from 6.5 list it; older ones cannot tell, so no).</summary>
    private static bool IsSemaphore(FileDescriptor fd)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/self/fdinfo/{fd.Number}"))
                if (line.StartsWith("eventfd-semaphore:", StringComparison.Ordinal))
                    return line.AsSpan("eventfd-semaphore:".Length).Trim().SequenceEqual("1");
        }
        catch (IOException) { }
        return false;
    }

    /// <summary>Adds one to the counter. Returns false if that failed (peer closed it, counter full).</summary>
    public bool Signal() => _peer ? PeerEventIo.Signal(Descriptor.Number) : Write(1);

    /// <summary>
    /// Adds <paramref name="value"/> with a plain write(2), for eventfds this process controls (and
    /// for tests that play a hostile peer): it blocks if the descriptor is blocking and the counter
    /// cannot take the value.
    /// </summary>
    public bool Write(ulong value)
    {
        while (true)
        {
            nint r = Libc.Write(Descriptor.Number, &value, 8);
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
        if (_peer)
            return PeerEventIo.Drain(Descriptor.Number);
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
