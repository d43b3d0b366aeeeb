using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;

namespace VhostUserVirtio.Tests.Support;

/// <summary>Quick proofs that net devices served somewhere (in-process or by the daemon) work.</summary>
public static class NetCheck
{
    /// <summary>A broadcast from <paramref name="from"/> arrives at <paramref name="to"/> intact.</summary>
    public static void AssertSwitches(NetFrontEnd from, NetFrontEnd to)
    {
        to.PostRx(4);
        var frame = NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", from.Mac, "through the switch " + Guid.NewGuid());
        from.Send(frame);
        Assert.Equal(frame, to.Receive().Frame);
    }

    /// <summary>A lone device negotiates, reports link up, and consumes a transmitted frame.</summary>
    public static void AssertDeviceUp(string socket)
    {
        using var fe = new NetFrontEnd(socket);
        var config = fe.Session.Connection.GetConfig(0, VirtioNet.ConfigSize)!;
        Assert.Equal(VirtioNet.StatusLinkUp, BinaryPrimitives.ReadUInt16LittleEndian(config.AsSpan(VirtioNet.ConfigStatus)));
        fe.Send(NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", fe.Mac, "anyone"));
    }
}
