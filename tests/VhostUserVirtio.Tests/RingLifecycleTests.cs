using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>Ring states per vhost-user.rst: started/stopped, enabled/disabled, base, reset.</summary>
[Trait("tier", "unit")]
public sealed class RingLifecycleTests : IDisposable
{
    private readonly EchoBackend _backend = new(devices: 1);

    public void Dispose() => _backend.Dispose();

    private static ushort Post(FrontEndSession s, int queue, byte[] payload, out ulong dst)
    {
        ulong src = s.Ram.Allocate((ulong)payload.Length);
        dst = s.Ram.Allocate((ulong)payload.Length);
        payload.CopyTo(s.Ram.Span(src, payload.Length));
        return s.Queues[queue].AddChain(new BufferSpec[] { new(src, (uint)payload.Length, false), new(dst, (uint)payload.Length, true) });
    }

    [Fact]
    public void Get_vring_base_stops_the_ring_and_set_vring_base_restarts_it_where_it_was()
    {
        using var s = FrontEndSession.Start(_backend.SocketPath(0));
        for (int i = 0; i < 3; i++)
            Echo.RoundTrip(s, 0, Echo.Text($"before stop {i}"));

        Assert.Equal(3u, s.Connection.GetVringBase(0));

        // Stopped: a chain posted now is not consumed.
        var payload = Echo.Text("posted while stopped");
        ushort head = Post(s, 0, payload, out ulong dst);
        s.Queues[0].Notify();
        Thread.Sleep(300);
        Assert.Equal(3, s.Queues[0].UsedIndex);

        // Restart at the returned base with fresh kick/call: the waiting chain is processed first.
        s.Queues[0].Configure(s.Connection, availBase: 3);
        s.Connection.SetVringEnable(0, true);
        var (id, len) = s.Queues[0].WaitUsed();
        Assert.Equal(head, id);
        Assert.Equal((uint)payload.Length, len);
        Assert.Equal(payload, s.Ram.Span(dst, payload.Length).ToArray());
        Assert.Equal(4, s.Queues[0].UsedIndex);

        Echo.RoundTrip(s, 0, Echo.Text("after restart"));
        Assert.Equal(5u, s.Connection.GetVringBase(0));
    }

    [Fact]
    public void A_disabled_ring_holds_its_buffers_until_enabled()
    {
        using var s = FrontEndSession.Start(_backend.SocketPath(0));
        s.Connection.SetVringEnable(0, false);
        AssertHeldUntilEnabled(s);
    }

    /// <summary>A chain on disabled ring 0 is not consumed, even when kicked, until SET_VRING_ENABLE(1).</summary>
    private static void AssertHeldUntilEnabled(FrontEndSession s)
    {
        ushort head = Post(s, 0, Echo.Text("wait for enable"), out _);
        s.Queues[0].Notify();
        Thread.Sleep(300);
        Assert.Equal(0, s.Queues[0].UsedIndex);
        s.Connection.SetVringEnable(0, true);
        Assert.Equal(head, s.Queues[0].WaitUsed().Id);
    }

    [Fact]
    public void Without_protocol_features_rings_are_enabled_by_set_features()
    {
        ulong noProtocolFeatures = ~VirtioFeature.Mask(VirtioFeature.VhostUserProtocolFeatures);
        using var s = FrontEndSession.Start(_backend.SocketPath(0), new FrontEndSession.Options { WantedFeatures = noProtocolFeatures });
        Assert.Equal(ProtocolFeatures.None, s.Connection.Negotiated);
        var payload = Echo.Text("no SET_VRING_ENABLE was sent");
        Assert.Equal(payload, Echo.RoundTrip(s, 0, payload));
    }

    [Fact]
    public void With_protocol_features_rings_start_disabled()
    {
        using var s = FrontEndSession.Start(_backend.SocketPath(0), new FrontEndSession.Options { EnableRings = false });
        AssertHeldUntilEnabled(s);
    }

    [Fact]
    public void Reset_device_stops_rings_and_clears_negotiation()
    {
        using var s = FrontEndSession.Start(_backend.SocketPath(0));
        Echo.RoundTrip(s, 0, Echo.Text("before reset"));
        Assert.NotEqual(0UL, s.Connection.GetStatus());

        s.Connection.ResetDevice();
        Assert.Equal(0UL, s.Connection.GetStatus());
        Post(s, 0, Echo.Text("after reset"), out _);
        s.Queues[0].Notify();
        Thread.Sleep(300);
        Assert.Equal(1, s.Queues[0].UsedIndex);
        Assert.Contains(_backend.Logs.Lines, l => l.Text.Contains("ResetDevice: rings stopped"));
    }

    [Fact]
    public void Reset_owner_also_stops_rings()
    {
        using var s = FrontEndSession.Start(_backend.SocketPath(0));
        s.Connection.ResetOwner();
        Post(s, 1, Echo.Text("after reset owner"), out _);
        s.Queues[1].Notify();
        Thread.Sleep(300);
        Assert.Equal(0, s.Queues[1].UsedIndex);
    }

    [Fact]
    public void Status_follows_set_status_and_features_ok_needs_features()
    {
        using var fe = VhostUserFrontEnd.Connect(_backend.SocketPath(0));
        fe.SetProtocolFeatures(fe.GetProtocolFeatures());
        fe.SetStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk);
        Assert.Equal((ulong)(DeviceStatus.Acknowledge | DeviceStatus.Driver), fe.GetStatus());
        fe.SetFeatures(fe.GetFeatures());
        fe.SetStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk);
        Assert.Equal((ulong)(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk), fe.GetStatus());
    }

    [Fact]
    public void Queue_num_and_protocol_features_are_exactly_what_is_implemented()
    {
        using var fe = VhostUserFrontEnd.Connect(_backend.SocketPath(0));
        var offered = fe.GetProtocolFeatures();
        Assert.Equal(ProtocolFeatures.Mq | ProtocolFeatures.ReplyAck | ProtocolFeatures.ResetDevice | ProtocolFeatures.ConfigureMemSlots |
                     ProtocolFeatures.Status | ProtocolFeatures.Config | ProtocolFeatures.LogShmfd | ProtocolFeatures.InflightShmfd, offered);
        fe.SetProtocolFeatures(offered);
        Assert.Equal(2UL, fe.GetQueueNum());
        Assert.Equal(509UL, fe.GetMaxMemSlots());
        Assert.Throws<FrontEndException>(() => fe.Request(FrontendRequest.SetProtocolFeatures, BitConverter.GetBytes((ulong)ProtocolFeatures.HostNotifier)));
    }

    [Fact]
    public void Config_space_reads_writes_and_refuses_out_of_range_access()
    {
        using var s = FrontEndSession.Start(_backend.SocketPath(0));
        Echo.RoundTrip(s, 0, Echo.Text("count me"));
        Echo.RoundTrip(s, 1, Echo.Text("and me"));
        var config = s.Connection.GetConfig(0, 8)!;
        Assert.Equal(2u, BitConverter.ToUInt32(config));

        s.Connection.SetConfig(4, BitConverter.GetBytes(0xfeedbeefu));
        Assert.Equal(0xfeedbeefu, BitConverter.ToUInt32(s.Connection.GetConfig(4, 4)!));
        s.Connection.SetConfig(6, new byte[] { 0x11 });
        Assert.Equal(0xfe11beefu, BitConverter.ToUInt32(s.Connection.GetConfig(4, 4)!));

        Assert.Throws<FrontEndException>(() => s.Connection.SetConfig(0, new byte[4]));   // read-only counter
        Assert.Null(s.Connection.GetConfig(6, 4));                                        // runs past the end
        Assert.Null(s.Connection.GetConfig(0xffff_fff0, 0x20));                           // offset + size overflows 32 bits
        Assert.True(_backend.Logs.WaitForWarning("outside the 8-byte config space"));
    }

    [Fact]
    public void Call_descriptor_can_be_swapped_while_the_ring_runs()
    {
        using var s = FrontEndSession.Start(_backend.SocketPath(0));
        Echo.RoundTrip(s, 0, Echo.Text("old call fd"));
        using var newCall = new VhostUserVirtio.Interop.EventFd();
        s.Connection.SetVringCall(0, newCall);
        Post(s, 0, Echo.Text("new call fd"), out _);
        s.Queues[0].Notify();
        Assert.True(newCall.Wait(10_000), "the new call descriptor was not signalled");
    }
}
