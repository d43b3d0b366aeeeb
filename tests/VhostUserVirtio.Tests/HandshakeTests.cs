using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

[Trait("tier", "unit")]
public sealed class HandshakeTests
{
    [Fact]
    public void Full_handshake_negotiates_features_and_buffers_round_trip()
    {
        using var backend = new EchoBackend(devices: 1);
        using var s = FrontEndSession.Start(backend.SocketPath(0));

        Assert.True(VirtioFeature.Has(s.Features, VirtioFeature.Version1));
        Assert.True(VirtioFeature.Has(s.Features, VirtioFeature.VhostUserProtocolFeatures));
        Assert.Equal(VhostUserVirtio.Backend.VhostUserBackend.CoreProtocolFeatures | ProtocolFeatures.Config, s.Connection.Negotiated);

        var payload = Echo.Text("hello through vhost-user");
        Assert.Equal(payload, Echo.RoundTrip(s, 0, payload));
        Assert.Equal(payload, Echo.RoundTrip(s, 1, payload, indirect: true));
        Assert.Equal(2, backend.Devices[0].ChainsEchoed);
    }
}
