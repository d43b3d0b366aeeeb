using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Echo;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>Server and client socket modes, one front end at a time, reconnects.</summary>
[Trait("tier", "unit")]
public sealed class ConnectionTests
{
    [Fact]
    public void Server_mode_serves_one_front_end_at_a_time_and_accepts_again_after_a_disconnect()
    {
        using var backend = new EchoBackend(devices: 1);
        using (var first = FrontEndSession.Start(backend.SocketPath(0)))
        {
            using var second = VhostUserFrontEnd.Connect(backend.SocketPath(0));
            Assert.True(second.WaitForClose(10_000), "a second concurrent front end was not refused");
            Assert.True(backend.Logs.WaitForWarning("refused a second front end"));
            Echo.RoundTrip(first, 0, Echo.Text("first still served"));
        }
        for (int i = 0; i < 3; i++)
            Echo.AssertDeviceWorks(backend.SocketPath(0));
        Assert.True(EchoBackend.WaitUntil(() => backend.Endpoints[0].ConnectionCount == 4));
    }

    [Fact]
    public async Task A_front_end_that_reconnects_while_its_old_socket_is_still_held_open_is_served_not_refused()
    {
        // What a child process forked at the wrong moment does: it holds a copy of the old socket, so
        // the back end sees its end of stream only when the copy goes.
        using var backend = new EchoBackend(devices: 1);
        var old = UnixSocket.Connect(backend.SocketPath(0));
        Assert.True(EchoBackend.WaitUntil(() => backend.Endpoints[0].IsConnected));
        var heldCopy = old.Descriptor.Duplicate();
        old.Dispose();
        var release = Task.Run(async () =>
        {
            await Task.Delay(300);
            heldCopy.Dispose();
        });
        // Blocks in its first request until the back end adopts it.
        using (var session = FrontEndSession.Start(backend.SocketPath(0), new FrontEndSession.Options { QueueCount = 1, QueueSize = 16, RamSize = 1 << 20 }))
            Assert.Equal(Echo.Text("served"), Echo.RoundTrip(session, 0, Echo.Text("served")));
        await release;
        Assert.False(backend.Logs.HasWarning("refused a second front end"));
    }

    [Fact]
    public void Client_mode_connects_with_retry_and_reconnects_after_the_front_end_goes()
    {
        using var backend = new EchoBackend(devices: 0);
        string path = Path.Combine(backend.Directory, "qemu.sock");
        // The back end starts first and keeps retrying until the front end listens.
        backend.Server.Serve(new EchoDevice("client0"), path, clientMode: true);
        Thread.Sleep(300);
        using var listener = UnixSocket.Listen(path);
        listener.Descriptor.SetNonBlocking(true);

        for (int round = 0; round < 2; round++)
        {
            using var s = FrontEndSession.Start(VhostUserFrontEnd.Accept(listener, TimeSpan.FromSeconds(15)),
                new FrontEndSession.Options { QueueCount = 1, QueueSize = 16, RamSize = 1 << 20 });
            var payload = Echo.Text($"client mode round {round}");
            Assert.Equal(payload, Echo.RoundTrip(s, 0, payload));
        }
    }

    [Fact]
    public void Stopping_the_server_removes_its_sockets()
    {
        var backend = new EchoBackend(devices: 2);
        var sockets = new[] { backend.SocketPath(0), backend.SocketPath(1) };
        Assert.All(sockets, p => Assert.True(File.Exists(p)));
        using (var s = FrontEndSession.Start(sockets[0]))
        {
            backend.Server.Dispose();
            Assert.True(s.Connection.WaitForClose(10_000));
        }
        Assert.All(sockets, p => Assert.False(File.Exists(p)));
        backend.Dispose();
    }
}
