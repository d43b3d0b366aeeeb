using System.Text;

namespace VhostUserVirtio.Interop;

/// <summary>
/// A Linux TAP interface (Ethernet frames, no packet-info prefix), opened non-blocking. Creating it
/// needs CAP_NET_ADMIN; an interface of that name that already exists (e.g. made persistent by an
/// administrator) is attached to instead.
/// </summary>
public sealed unsafe class TapDevice : IDisposable
{
    private const int IfNameSize = 16;

    private TapDevice(FileDescriptor fd, string name)
    {
        Descriptor = fd;
        Name = name;
    }

    public FileDescriptor Descriptor { get; }
    public string Name { get; }

    /// <summary>Opens (creating if missing) the TAP interface <paramref name="name"/> and brings its link up.</summary>
    public static TapDevice Open(string name)
    {
        byte[] bytes = Encoding.ASCII.GetBytes(name);
        if (bytes.Length == 0 || bytes.Length >= IfNameSize)
            throw new ArgumentException($"interface name '{name}' must be 1..{IfNameSize - 1} characters", nameof(name));
        FileDescriptor? fd = null;
        try
        {
            fd = new FileDescriptor(NativeException.Check(Libc.Open("/dev/net/tun", Libc.O_RDWR | Libc.O_CLOEXEC), "open(/dev/net/tun)"));
            byte* ifr = stackalloc byte[40];
            new Span<byte>(ifr, 40).Clear();
            bytes.CopyTo(new Span<byte>(ifr, IfNameSize));
            *(short*)(ifr + IfNameSize) = Libc.IFF_TAP | Libc.IFF_NO_PI;
            NativeException.Check(Libc.Ioctl(fd.Number, Libc.TUNSETIFF, ifr), $"ioctl(TUNSETIFF {name})");
            fd.SetNonBlocking(true);
            SetLinkUp(name);
            return new TapDevice(fd, name);
        }
        catch (NativeException e) when (e.Errno is Libc.EPERM or Libc.EACCES)
        {
            fd?.Dispose();
            throw new UnauthorizedAccessException(
                $"TAP interface {name} needs CAP_NET_ADMIN: creating it, attaching to one another user owns and bringing it up all do " +
                $"(run as root, or grant the capability: systemd AmbientCapabilities=CAP_NET_ADMIN, or setcap cap_net_admin+ep); {e.Message}", e);
        }
        catch
        {
            fd?.Dispose();
            throw;
        }
    }

    /// <summary>Sets IFF_UP on an interface (SIOCGIFFLAGS / SIOCSIFFLAGS on a throwaway socket).</summary>
    private static void SetLinkUp(string name)
    {
        using var sock = new FileDescriptor(NativeException.Check(Libc.Socket(Libc.AF_INET, Libc.SOCK_DGRAM | Libc.SOCK_CLOEXEC, 0), "socket"));
        byte* ifr = stackalloc byte[40];
        new Span<byte>(ifr, 40).Clear();
        Encoding.ASCII.GetBytes(name).CopyTo(new Span<byte>(ifr, IfNameSize));
        NativeException.Check(Libc.Ioctl(sock.Number, Libc.SIOCGIFFLAGS, ifr), "ioctl(SIOCGIFFLAGS)");
        // Already up (a persistent TAP an administrator prepared): setting it again would need CAP_NET_ADMIN.
        if ((*(short*)(ifr + IfNameSize) & Libc.IFF_UP) != 0)
            return;
        *(short*)(ifr + IfNameSize) |= Libc.IFF_UP;
        NativeException.Check(Libc.Ioctl(sock.Number, Libc.SIOCSIFFLAGS, ifr), "ioctl(SIOCSIFFLAGS)");
    }

    /// <summary>The interface's MTU: the largest frame (less its Ethernet header) the kernel forwards into it.</summary>
    public int Mtu
    {
        get
        {
            using var sock = new FileDescriptor(NativeException.Check(Libc.Socket(Libc.AF_INET, Libc.SOCK_DGRAM | Libc.SOCK_CLOEXEC, 0), "socket"));
            byte* ifr = stackalloc byte[40];
            new Span<byte>(ifr, 40).Clear();
            Encoding.ASCII.GetBytes(Name).CopyTo(new Span<byte>(ifr, IfNameSize));
            NativeException.Check(Libc.Ioctl(sock.Number, Libc.SIOCGIFMTU, ifr), $"ioctl(SIOCGIFMTU {Name})");
            return *(int*)(ifr + IfNameSize);
        }
    }

    /// <summary>Sets the interface's MTU (SIOCSIFMTU; CAP_NET_ADMIN, as creating it needs).</summary>
    public void SetMtu(int mtu)
    {
        using var sock = new FileDescriptor(NativeException.Check(Libc.Socket(Libc.AF_INET, Libc.SOCK_DGRAM | Libc.SOCK_CLOEXEC, 0), "socket"));
        byte* ifr = stackalloc byte[40];
        new Span<byte>(ifr, 40).Clear();
        Encoding.ASCII.GetBytes(Name).CopyTo(new Span<byte>(ifr, IfNameSize));
        *(int*)(ifr + IfNameSize) = mtu;
        NativeException.Check(Libc.Ioctl(sock.Number, Libc.SIOCSIFMTU, ifr), $"ioctl(SIOCSIFMTU {Name} {mtu})");
    }

    /// <summary>Reads one frame; returns its length, or -1 when none is waiting.</summary>
    public int Read(Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                nint r = Libc.Read(Descriptor.Number, p, (nuint)buffer.Length);
                if (r >= 0)
                    return (int)r;
                int errno = Libc.Errno;
                if (errno == Libc.EINTR)
                    continue;
                if (errno == Libc.EAGAIN)
                    return -1;
                throw new NativeException("read(tap)", errno);
            }
        }
    }

    /// <summary>Writes one frame; false when the interface cannot take it now (or is down).</summary>
    public bool Write(ReadOnlySpan<byte> frame)
    {
        fixed (byte* p = frame)
        {
            while (true)
            {
                nint r = Libc.Write(Descriptor.Number, p, (nuint)frame.Length);
                if (r == frame.Length)
                    return true;
                if (r < 0 && Libc.Errno == Libc.EINTR)
                    continue;
                return false;
            }
        }
    }

    public void Dispose() => Descriptor.Dispose();
}
