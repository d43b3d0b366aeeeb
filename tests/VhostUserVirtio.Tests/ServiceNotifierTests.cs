using System.Net.Sockets;
using System.Text;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Tests;

/// <summary>
/// sd_notify without libsystemd: each state is one datagram to the socket $NOTIFY_SOCKET names,
/// whether a path or an abstract name ('@'), as a service manager receives it.
/// </summary>
[Trait("tier", "unit")]
public sealed class ServiceNotifierTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-notify-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static Socket Listener(UnixDomainSocketEndPoint endPoint)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified) { ReceiveTimeout = 10_000 };
        socket.Bind(endPoint);
        return socket;
    }

    private static string ReceiveOne(Socket socket)
    {
        var buffer = new byte[4096];
        int n = socket.Receive(buffer);
        return Encoding.UTF8.GetString(buffer, 0, n);
    }

    [Fact]
    public void A_notification_reaches_the_socket_at_a_path_as_one_datagram()
    {
        var path = Path.Combine(_dir, "notify");
        using var socket = Listener(new UnixDomainSocketEndPoint(path));
        new ServiceNotifier(path).Notify("READY=1\nSTATUS=serving");
        Assert.Equal("READY=1\nSTATUS=serving", ReceiveOne(socket));
    }

    [Fact]
    public void An_at_sign_names_a_socket_in_the_abstract_namespace()
    {
        var name = "vuv-notify-" + Guid.NewGuid().ToString("N");
        using var socket = Listener(new UnixDomainSocketEndPoint("\0" + name));
        new ServiceNotifier("@" + name).Notify("STOPPING=1");
        Assert.Equal("STOPPING=1", ReceiveOne(socket));
    }

    [Theory]
    [InlineData("vsock:2:1234")]
    [InlineData("relative/path")]
    [InlineData("@")]
    public void An_address_that_is_not_a_unix_socket_is_refused(string address) =>
        Assert.Contains(ServiceNotifier.EnvironmentVariable, Assert.Throws<ArgumentException>(() => new ServiceNotifier(address)).Message);

    [Fact]
    public void A_socket_nobody_listens_on_is_reported()
    {
        var error = Assert.Throws<NativeException>(() => new ServiceNotifier(Path.Combine(_dir, "nobody")).Notify("READY=1"));
        Assert.Equal("connect", error.Call.Split('(')[0]);
    }
}
