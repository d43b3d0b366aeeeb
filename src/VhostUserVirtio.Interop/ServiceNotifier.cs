using System.Text;

namespace VhostUserVirtio.Interop;

/// <summary>
/// The service manager's readiness protocol (sd_notify(3)) without libsystemd: each state change
/// ("READY=1", "STOPPING=1", "STATUS=…") is one datagram to the AF_UNIX socket named by
/// $NOTIFY_SOCKET, a path or, with a leading '@', a name in the abstract namespace. A process not
/// started by a service manager has no such variable and notifies nothing.
/// </summary>
public sealed unsafe class ServiceNotifier
{
    /// <summary>The variable systemd sets for a Type=notify service.</summary>
    public const string EnvironmentVariable = "NOTIFY_SOCKET";

    private const int SunPathLength = 108;

    private readonly byte[] _address; // sun_path as sent: a leading 0 for an abstract name, no terminator then

    /// <summary>Notifies the socket at <paramref name="address"/> ("/path" or "@abstract-name").</summary>
    public ServiceNotifier(string address)
    {
        if (address.StartsWith('/'))
            _address = [.. Encoding.UTF8.GetBytes(address), 0];
        else if (address.StartsWith('@') && address.Length > 1)
            _address = [0, .. Encoding.UTF8.GetBytes(address[1..])];
        else // e.g. systemd's vsock: addresses, which a service on the host never gets
            throw new ArgumentException($"{EnvironmentVariable}={address}: not a Unix socket path or @abstract name", nameof(address));
        if (_address.Length > SunPathLength)
            throw new ArgumentException($"{EnvironmentVariable}={address}: longer than a Unix socket address allows", nameof(address));
        Address = address;
    }

    public string Address { get; }

    /// <summary>The notifier $NOTIFY_SOCKET names, or null when it is unset (not run by a service manager).</summary>
    public static ServiceNotifier? FromEnvironment() =>
        Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } address ? new ServiceNotifier(address) : null;

    /// <summary>
    /// Sends <paramref name="state"/> (newline-separated assignments) as one datagram. A socket per
    /// call, as sd_notify does: notifications are rare, and the manager may rebind its socket between
    /// them (daemon-reexec). Throws <see cref="NativeException"/> when the datagram cannot be sent.
    /// </summary>
    public void Notify(string state)
    {
        byte[] payload = Encoding.UTF8.GetBytes(state);
        using var sock = new FileDescriptor(NativeException.Check(Libc.Socket(Libc.AF_UNIX, Libc.SOCK_DGRAM | Libc.SOCK_CLOEXEC, 0), "socket(AF_UNIX, SOCK_DGRAM)"));
        byte* addr = stackalloc byte[2 + SunPathLength];
        new Span<byte>(addr, 2 + SunPathLength).Clear();
        *(ushort*)addr = Libc.AF_UNIX;
        _address.CopyTo(new Span<byte>(addr + 2, SunPathLength));
        NativeException.Check(Libc.Connect(sock.Number, addr, (uint)(2 + _address.Length)), $"connect({Address})");
        fixed (byte* p = payload)
        {
            nint sent = Libc.Write(sock.Number, p, (nuint)payload.Length);
            if (sent < 0)
                throw NativeException.FromLastError($"send({Address})");
            if (sent != payload.Length) // a datagram goes whole or not at all; this would be a kernel surprise
                throw new IOException($"send({Address}): {sent} of {payload.Length} bytes sent");
        }
    }
}
