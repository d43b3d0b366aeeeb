using System.Buffers.Binary;

namespace VhostUserVirtio.Interop;

/// <summary>
/// An AF_PACKET raw socket bound to one interface: sends whole Ethernet frames out of it, with no IP
/// involved. Used to put frames on a TAP uplink from the host side (e.g. in tests). Needs CAP_NET_RAW.
/// </summary>
public sealed unsafe class PacketSocket : IDisposable
{
    private const int AF_PACKET = 17;
    private const int SOCK_RAW = 3;
    private const ushort ETH_P_ALL = 0x0003;

    private readonly FileDescriptor _fd;

    private PacketSocket(FileDescriptor fd) => _fd = fd;

    /// <summary>Opens a raw socket bound to the interface with index <paramref name="ifIndex"/> (/sys/class/net/IF/ifindex).</summary>
    public static PacketSocket Open(int ifIndex)
    {
        ushort protocol = BinaryPrimitives.ReverseEndianness(ETH_P_ALL);
        var fd = new FileDescriptor(NativeException.Check(Libc.Socket(AF_PACKET, SOCK_RAW | Libc.SOCK_CLOEXEC, protocol), "socket(AF_PACKET)"));
        try
        {
            byte* sll = stackalloc byte[20]; // struct sockaddr_ll
            new Span<byte>(sll, 20).Clear();
            *(ushort*)sll = AF_PACKET;
            *(ushort*)(sll + 2) = protocol;
            *(int*)(sll + 4) = ifIndex;
            NativeException.Check(Libc.Bind(fd.Number, sll, 20), "bind(AF_PACKET)");
            return new PacketSocket(fd);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    public void Send(ReadOnlySpan<byte> frame)
    {
        fixed (byte* p = frame)
            if (Libc.Write(_fd.Number, p, (nuint)frame.Length) != frame.Length)
                throw NativeException.FromLastError("write(AF_PACKET)");
    }

    public void Dispose() => _fd.Dispose();
}
