using System.Text;

namespace VhostUserVirtio.Interop;

/// <summary>
/// An AF_UNIX stream socket that can carry file descriptors (SCM_RIGHTS). Listening and connected
/// sockets are both this type; all received descriptors are CLOEXEC and owned by the caller.
/// </summary>
public sealed unsafe class UnixSocket : IDisposable
{
    /// <summary>Most descriptors one <see cref="Receive"/> makes room for; more is reported as truncated.</summary>
    public const int MaxReceivedFds = 32;

    private const int SunPathLength = 108;

    private UnixSocket(FileDescriptor fd) => Descriptor = fd;

    public FileDescriptor Descriptor { get; }

    /// <summary>
    /// Creates a socket listening on <paramref name="path"/>, replacing a stale socket file there. A
    /// socket someone still listens on is not replaced (that would silently steal its path): IOException.
    /// <paramref name="access"/> is given to the file between bind and listen, so no connection is
    /// accepted before the file has its final owner and mode.
    /// </summary>
    public static UnixSocket Listen(string path, int backlog = 4, SocketAccess? access = null)
    {
        if (File.Exists(path) && IsListenedOn(path))
            throw new IOException($"another process is listening on {path}");
        var sock = Create();
        try
        {
            if (File.Exists(path) && (File.GetAttributes(path) & FileAttributes.Directory) == 0)
                File.Delete(path);
            WithAddress(path, (addr, len) => NativeException.Check(Libc.Bind(sock.Descriptor.Number, addr, len), $"bind({path})"));
            BindAccess(path, access);
            NativeException.Check(Libc.Listen(sock.Descriptor.Number, backlog), "listen");
            return sock;
        }
        catch
        {
            sock.Dispose();
            throw;
        }
    }

    /// <summary>Gives a just-bound socket file its access; if that fails the file is removed (nobody could use it as intended).</summary>
    private static void BindAccess(string path, SocketAccess? access)
    {
        if (access == null)
            return;
        try
        {
            access.ApplyToSocket(path);
        }
        catch
        {
            try { File.Delete(path); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>
    /// Creates a socket listening on <paramref name="path"/> that takes the path over from whoever
    /// holds it now, without a moment where the path is missing or refuses: the socket is bound to a
    /// sibling name and renamed over the path (an atomic replace). Connections already made to the
    /// previous listener stay with it; every later connect reaches this one. A path that exists and is
    /// not a socket is never replaced (ArgumentException). <paramref name="access"/> is given to the
    /// file before it listens and takes the path.
    /// </summary>
    public static UnixSocket ListenReplacing(string path, int backlog = 4, SocketAccess? access = null)
    {
        if (!Path.IsPathFullyQualified(path))
            throw new ArgumentException($"{path}: not an absolute path", nameof(path));
        if (Identity(path) is { IsSocket: false })
            throw new ArgumentException($"{path} exists and is not a socket", nameof(path));
        string temporary = $"{path}.{Environment.ProcessId}.new";
        if (Encoding.UTF8.GetByteCount(temporary) >= SunPathLength)
            throw new ArgumentException($"{path}: too long to take over (the temporary name must fit in {SunPathLength - 1} bytes)", nameof(path));
        var sock = Create();
        try
        {
            try { File.Delete(temporary); } catch (IOException) { }
            WithAddress(temporary, (addr, len) => NativeException.Check(Libc.Bind(sock.Descriptor.Number, addr, len), $"bind({temporary})"));
            access?.ApplyToSocket(temporary);
            NativeException.Check(Libc.Listen(sock.Descriptor.Number, backlog), "listen");
            NativeException.Check(Libc.Rename(temporary, path), $"rename({temporary}, {path})");
            return sock;
        }
        catch
        {
            sock.Dispose();
            try { File.Delete(temporary); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>Which file a path names now (lstat), or null if none: to tell later whether the path is still ours.</summary>
    public static PathIdentity? Identity(string path)
    {
        Libc.StatBuffer st;
        if (Libc.Lstat(path, &st) != 0)
            return null;
        return new PathIdentity(st.Device, st.Inode, (st.Mode & Libc.S_IFMT) == Libc.S_IFSOCK);
    }

    /// <summary>
    /// Removes the socket file at <paramref name="path"/> only if it is still <paramref name="bound"/>:
    /// a path taken over by another listener (another process after a handover) is left to it.
    /// </summary>
    public static bool UnlinkIfSame(string path, PathIdentity bound)
    {
        if (Identity(path) is not { } now || now.Device != bound.Device || now.Inode != bound.Inode)
            return false;
        try { File.Delete(path); } catch (IOException) { return false; }
        return true;
    }

    /// <summary>
    /// Takes over a listening AF_UNIX stream socket created by someone else (libvirt's --fd=N): checks
    /// that it is one, then makes it non-blocking and CLOEXEC. Throws ArgumentException when
    /// <paramref name="fd"/> is not such a socket; in that case the descriptor is left untouched and not owned.
    /// </summary>
    public static UnixSocket AdoptListener(int fd)
    {
        Libc.StatBuffer st;
        if (fd < 0 || Libc.Fstat(fd, &st) != 0)
            throw new ArgumentException($"fd {fd} is not an open descriptor", nameof(fd));
        if ((st.Mode & Libc.S_IFMT) != Libc.S_IFSOCK)
            throw new ArgumentException($"fd {fd} is not a socket", nameof(fd));
        if (GetIntOption(fd, Libc.SO_DOMAIN) != Libc.AF_UNIX || GetIntOption(fd, Libc.SO_TYPE) != Libc.SOCK_STREAM)
            throw new ArgumentException($"fd {fd} is not a Unix stream socket", nameof(fd));
        if (GetIntOption(fd, Libc.SO_ACCEPTCONN) != 1)
            throw new ArgumentException($"fd {fd} is a Unix socket but not listening", nameof(fd));
        var sock = new UnixSocket(new FileDescriptor(fd));
        sock.Descriptor.SetNonBlocking(true); // accepts run on the event loop
        NativeException.Check(Libc.Fcntl(fd, Libc.F_SETFD, Libc.FD_CLOEXEC), "fcntl(F_SETFD)");
        return sock;
    }

    /// <summary>
    /// Takes a connected Unix stream socket made elsewhere (one a session keeper held while this
    /// process restarted) and makes it non-blocking. Throws ArgumentException, leaving the descriptor
    /// to the caller, when it is not one.
    /// </summary>
    public static UnixSocket AdoptConnected(FileDescriptor fd)
    {
        int n = fd.Number;
        if (GetIntOption(n, Libc.SO_DOMAIN) != Libc.AF_UNIX || GetIntOption(n, Libc.SO_TYPE) != Libc.SOCK_STREAM || GetIntOption(n, Libc.SO_ACCEPTCONN) != 0)
            throw new ArgumentException($"fd {n} is not a connected Unix stream socket", nameof(fd));
        fd.SetNonBlocking(true);
        return new UnixSocket(fd);
    }

    private static int GetIntOption(int fd, int name)
    {
        int value = 0;
        uint length = sizeof(int);
        return Libc.Getsockopt(fd, Libc.SOL_SOCKET, name, &value, &length) == 0 ? value : -1;
    }

    private static bool IsListenedOn(string path)
    {
        try
        {
            using var probe = Connect(path);
            return true;
        }
        catch (NativeException)
        {
            return false; // a stale file left by a process that died
        }
    }

    /// <summary>Connects to a listening socket. Throws NativeException (ENOENT, ECONNREFUSED…) when nobody listens.</summary>
    public static UnixSocket Connect(string path, bool nonBlocking = false) => Connect(path, nonBlocking, Libc.SOCK_STREAM);

    /// <summary>
    /// A listening SOCK_SEQPACKET socket at <paramref name="path"/> (which must not exist): every send
    /// is one record, delivered whole with its descriptors, for small request protocols between
    /// processes of this project.
    /// </summary>
    public static UnixSocket ListenRecords(string path, int backlog = 4)
    {
        var sock = Create(Libc.SOCK_SEQPACKET);
        try
        {
            WithAddress(path, (addr, len) => NativeException.Check(Libc.Bind(sock.Descriptor.Number, addr, len), $"bind({path})"));
            NativeException.Check(Libc.Listen(sock.Descriptor.Number, backlog), "listen");
            return sock;
        }
        catch
        {
            sock.Dispose();
            throw;
        }
    }

    /// <summary>Connects to a <see cref="ListenRecords"/> socket (non-blocking: callers wait with timeouts).</summary>
    public static UnixSocket ConnectRecords(string path) => Connect(path, true, Libc.SOCK_SEQPACKET);

    /// <summary>This process's user id (to compare with <see cref="PeerCredentials"/>).</summary>
    public static uint CurrentUserId => Libc.GetUid();

    /// <summary>The process and user at the other end of a connected socket (SO_PEERCRED, as of connect).</summary>
    public (int Pid, uint Uid) PeerCredentials()
    {
        int* cred = stackalloc int[3];
        uint length = 3 * sizeof(int);
        NativeException.Check(Libc.Getsockopt(Descriptor.Number, Libc.SOL_SOCKET, Libc.SO_PEERCRED, cred, &length), "getsockopt(SO_PEERCRED)");
        return (cred[0], (uint)cred[1]);
    }

    private static UnixSocket Connect(string path, bool nonBlocking, int type)
    {
        var sock = Create(type);
        try
        {
            sock.Descriptor.SetNonBlocking(false);
            WithAddress(path, (addr, len) => NativeException.Check(Libc.Connect(sock.Descriptor.Number, addr, len), $"connect({path})"));
            if (nonBlocking)
                sock.Descriptor.SetNonBlocking(true);
            return sock;
        }
        catch
        {
            sock.Dispose();
            throw;
        }
    }

    /// <summary>Accepts one pending connection (non-blocking socket), or returns null when none is pending.</summary>
    public UnixSocket? Accept()
    {
        while (true)
        {
            int fd = Libc.Accept4(Descriptor.Number, null, null, Libc.SOCK_CLOEXEC | Libc.SOCK_NONBLOCK);
            if (fd >= 0)
                return new UnixSocket(new FileDescriptor(fd));
            int errno = Libc.Errno;
            if (errno == Libc.EINTR)
                continue;
            if (errno == Libc.EAGAIN)
                return null;
            throw new NativeException("accept4", errno);
        }
    }

    /// <summary>A connected pair of blocking sockets (socketpair), e.g. to pass one end to a peer and watch it close.</summary>
    public static (UnixSocket, UnixSocket) CreatePair()
    {
        int* sv = stackalloc int[2];
        NativeException.Check(Libc.SocketPair(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0, sv), "socketpair");
        return (new UnixSocket(new FileDescriptor(sv[0])), new UnixSocket(new FileDescriptor(sv[1])));
    }

    private static UnixSocket Create(int type = Libc.SOCK_STREAM)
    {
        int fd = NativeException.Check(
            Libc.Socket(Libc.AF_UNIX, type | Libc.SOCK_CLOEXEC | Libc.SOCK_NONBLOCK, 0), "socket");
        return new UnixSocket(new FileDescriptor(fd));
    }

    private delegate void AddressAction(void* addr, uint length);

    private static void WithAddress(string path, AddressAction action)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(path);
        if (bytes.Length >= SunPathLength)
            throw new ArgumentException($"socket path is {bytes.Length} bytes; Unix sockets allow at most {SunPathLength - 1}: {path}", nameof(path));
        byte* addr = stackalloc byte[2 + SunPathLength];
        new Span<byte>(addr, 2 + SunPathLength).Clear();
        *(ushort*)addr = Libc.AF_UNIX;
        bytes.CopyTo(new Span<byte>(addr + 2, SunPathLength));
        action(addr, (uint)(2 + bytes.Length + 1));
    }

    /// <summary>
    /// Sends all of <paramref name="data"/>, attaching <paramref name="fds"/> to the first segment.
    /// On a non-blocking socket it waits up to <paramref name="timeoutMs"/> for room, then throws.
    /// For clients (front ends, tools); a server answering peers uses <see cref="TrySend"/>.
    /// </summary>
    public void Send(ReadOnlySpan<byte> data, ReadOnlySpan<int> fds = default, int timeoutMs = 5000)
    {
        int controlLength = fds.IsEmpty ? 0 : CmsgSpace(fds.Length * sizeof(int));
        byte* control = stackalloc byte[Math.Max(controlLength, 1)];
        WriteRights(control, controlLength, fds);

        int sent = 0;
        fixed (byte* p = data)
        {
            while (sent < data.Length || (data.Length == 0 && controlLength > 0 && sent == 0))
            {
                var iov = new Libc.IoVec { Base = p + sent, Length = (nuint)(data.Length - sent) };
                var msg = new Libc.MsgHdr { Iov = &iov, IovLength = 1 };
                if (controlLength > 0 && sent == 0)
                {
                    msg.Control = control;
                    msg.ControlLength = (nuint)controlLength;
                }
                nint r = Libc.SendMsg(Descriptor.Number, &msg, Libc.MSG_NOSIGNAL);
                if (r >= 0)
                {
                    sent += (int)r;
                    if (data.Length == 0)
                        break;
                    continue;
                }
                int errno = Libc.Errno;
                if (errno == Libc.EINTR)
                    continue;
                if (errno == Libc.EAGAIN && Descriptor.WaitWritable(timeoutMs))
                    continue;
                throw new NativeException("sendmsg", errno);
            }
        }
    }

    /// <summary>
    /// Sends as much of <paramref name="data"/> as the socket takes now and returns how much that was
    /// (0 when it has no room). Never waits, whatever the socket's flags (MSG_DONTWAIT). Throws
    /// NativeException when the connection is gone (EPIPE, ECONNRESET). <paramref name="fds"/> go
    /// with the first byte: they were sent exactly when the result is not 0 (the caller still owns them).
    /// </summary>
    public int TrySend(ReadOnlySpan<byte> data, ReadOnlySpan<int> fds = default)
    {
        int controlLength = fds.IsEmpty ? 0 : CmsgSpace(fds.Length * sizeof(int));
        byte* control = stackalloc byte[Math.Max(controlLength, 1)];
        WriteRights(control, controlLength, fds);
        int sent = 0;
        fixed (byte* p = data)
        {
            while (sent < data.Length)
            {
                var iov = new Libc.IoVec { Base = p + sent, Length = (nuint)(data.Length - sent) };
                var msg = new Libc.MsgHdr { Iov = &iov, IovLength = 1 };
                if (controlLength > 0 && sent == 0)
                {
                    msg.Control = control;
                    msg.ControlLength = (nuint)controlLength;
                }
                nint r = Libc.SendMsg(Descriptor.Number, &msg, Libc.MSG_NOSIGNAL | Libc.MSG_DONTWAIT);
                if (r >= 0)
                {
                    sent += (int)r;
                    continue;
                }
                int errno = Libc.Errno;
                if (errno == Libc.EINTR)
                    continue;
                if (errno == Libc.EAGAIN)
                    break;
                throw new NativeException("sendmsg", errno);
            }
        }
        return sent;
    }

    /// <summary>
    /// Receives up to buffer.Length bytes and any descriptors that came with them (appended to
    /// <paramref name="fds"/>, each owned from now on). Returns the byte count, 0 at end of stream,
    /// or -1 when a non-blocking socket has nothing to read. Room is made for at most
    /// <paramref name="maxFds"/> descriptors (0: none); <paramref name="truncated"/> reports that the
    /// peer sent more than fit, and the kernel closed the excess without ever installing it here.
    /// </summary>
    public int Receive(Span<byte> buffer, List<FileDescriptor> fds, out bool truncated, int maxFds = MaxReceivedFds)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxFds);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxFds, MaxReceivedFds);
        int controlLength = maxFds == 0 ? 0 : CmsgSpace(maxFds * sizeof(int));
        byte* control = stackalloc byte[Math.Max(controlLength, 1)];
        truncated = false;
        fixed (byte* p = buffer)
        {
            while (true)
            {
                var iov = new Libc.IoVec { Base = p, Length = (nuint)buffer.Length };
                var msg = new Libc.MsgHdr { Iov = &iov, IovLength = 1 };
                if (controlLength > 0)
                {
                    msg.Control = control;
                    msg.ControlLength = (nuint)controlLength;
                }
                nint r = Libc.RecvMsg(Descriptor.Number, &msg, Libc.MSG_CMSG_CLOEXEC);
                if (r < 0)
                {
                    int errno = Libc.Errno;
                    if (errno == Libc.EINTR)
                        continue;
                    if (errno == Libc.EAGAIN)
                        return -1;
                    throw new NativeException("recvmsg", errno);
                }
                truncated = (msg.Flags & Libc.MSG_CTRUNC) != 0;
                CollectFds(control, (int)msg.ControlLength, fds);
                return (int)r;
            }
        }
    }

    /// <summary>An SCM_RIGHTS control message carrying <paramref name="fds"/> into <paramref name="control"/> (none when the length is 0).</summary>
    private static void WriteRights(byte* control, int controlLength, ReadOnlySpan<int> fds)
    {
        if (controlLength == 0)
            return;
        new Span<byte>(control, controlLength).Clear();
        var hdr = (Libc.CmsgHdr*)control;
        hdr->Length = (nuint)(sizeof(Libc.CmsgHdr) + fds.Length * sizeof(int));
        hdr->Level = Libc.SOL_SOCKET;
        hdr->Type = Libc.SCM_RIGHTS;
        fds.CopyTo(new Span<int>(control + sizeof(Libc.CmsgHdr), fds.Length));
    }

    private static void CollectFds(byte* control, int length, List<FileDescriptor> fds)
    {
        int offset = 0;
        while (offset + sizeof(Libc.CmsgHdr) <= length)
        {
            var hdr = (Libc.CmsgHdr*)(control + offset);
            int cmsgLen = (int)hdr->Length;
            if (cmsgLen < sizeof(Libc.CmsgHdr) || offset + cmsgLen > length)
                break;
            if (hdr->Level == Libc.SOL_SOCKET && hdr->Type == Libc.SCM_RIGHTS)
            {
                int count = (cmsgLen - sizeof(Libc.CmsgHdr)) / sizeof(int);
                int* data = (int*)(control + offset + sizeof(Libc.CmsgHdr));
                for (int i = 0; i < count; i++)
                    fds.Add(new FileDescriptor(data[i]));
            }
            offset += CmsgAlign(cmsgLen);
        }
    }

    private static int CmsgAlign(int length) => (length + 7) & ~7;

    private static int CmsgSpace(int dataLength) => sizeof(Libc.CmsgHdr) + CmsgAlign(dataLength);

    /// <summary>Shuts both directions down so a blocked peer sees end of stream at once.</summary>
    public void Shutdown()
    {
        if (!Descriptor.IsClosed)
            Libc.Shutdown(Descriptor.Number, Libc.SHUT_RDWR);
    }

    public void Dispose() => Descriptor.Dispose();
}

/// <summary>The file a path named when looked at (device and inode), and whether it was a socket.</summary>
public readonly record struct PathIdentity(ulong Device, ulong Inode, bool IsSocket);
