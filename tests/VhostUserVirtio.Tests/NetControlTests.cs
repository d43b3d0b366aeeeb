using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Echo;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>SEND_RARP and NET_SET_MTU reach a device that offers them, and only such a device.</summary>
[Trait("tier", "unit")]
public sealed class NetControlTests
{
    /// <summary>An echo device that also takes the net-only requests, recording what it was told.</summary>
    private sealed class NetLikeDevice : IVirtioDevice, INetDeviceControl
    {
        private readonly EchoDevice _echo = new("netlike");
        public byte[]? AnnouncedMac;
        public uint Mtu;

        public string Name => _echo.Name;
        public ulong Features => _echo.Features;
        public ProtocolFeatures ExtraProtocolFeatures => ProtocolFeatures.Rarp | ProtocolFeatures.NetMtu;
        public int QueueCount => _echo.QueueCount;
        public int MaxQueueSize => _echo.MaxQueueSize;
        public int ConfigSize => _echo.ConfigSize;
        public void ReadConfig(int offset, Span<byte> data) => _echo.ReadConfig(offset, data);
        public bool WriteConfig(int offset, ReadOnlySpan<byte> data) => _echo.WriteConfig(offset, data);
        public void SetDriverFeatures(ulong features) { }
        public void QueueStarted(DeviceQueue queue) { }
        public void QueueStopped(DeviceQueue queue) { }
        public void ProcessQueue(DeviceQueue queue) => _echo.ProcessQueue(queue);
        public void Reset() { }
        public void AnnounceMac(ReadOnlySpan<byte> mac) => AnnouncedMac = mac.ToArray();
        public bool SetMtu(uint mtu) { if (mtu < 68 || mtu > 65535) return false; Mtu = mtu; return true; }
    }

    [Fact]
    public void Send_rarp_and_net_set_mtu_are_delivered_to_a_net_device()
    {
        using var backend = new EchoBackend(devices: 0);
        var device = new NetLikeDevice();
        string path = Path.Combine(backend.Directory, "net.sock");
        backend.Server.Serve(device, path);
        using var s = FrontEndSession.Start(path);
        Assert.True((s.Connection.Negotiated & (ProtocolFeatures.Rarp | ProtocolFeatures.NetMtu)) != 0);

        var mac = new byte[8] { 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0, 0 };
        s.Connection.Request(FrontendRequest.SendRarp, mac);
        Assert.Equal(mac[..6], device.AnnouncedMac);

        s.Connection.Request(FrontendRequest.NetSetMtu, BitConverter.GetBytes(9000UL));
        Assert.Equal(9000u, device.Mtu);
        Assert.Throws<FrontEndException>(() => s.Connection.Request(FrontendRequest.NetSetMtu, BitConverter.GetBytes(10UL)));
        Assert.True(backend.Logs.WaitForWarning("MTU 10 is not acceptable"));
        Echo.RoundTrip(s, 0, Echo.Text("still echoing"));
    }
}
