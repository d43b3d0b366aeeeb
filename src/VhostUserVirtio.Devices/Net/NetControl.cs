using System.Buffers.Binary;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Devices.Net;

/// <summary>
/// The virtio-net control commands (VIRTIO 5.1.6.5), applied to one device. Used by the device's own
/// control queue and by the owner's NET_MEMBER_CTRL admin command, so both behave the same.
/// </summary>
public static class NetControl
{
    /// <summary>
    /// Applies one command; returns VIRTIO_NET_OK or VIRTIO_NET_ERR. The owner-only classes (trust,
    /// link) are reachable only through the owner's NET_MEMBER_CTRL, never a device's own control queue.
    /// </summary>
    public static byte Apply(NetDevice device, byte cls, byte command, ReadOnlySpan<byte> data)
    {
        var filter = device.Filter;
        switch (cls)
        {
            case VirtioNet.CtrlRx when data.Length == 1 && data[0] <= 1:
                bool on = data[0] == 1;
                switch (command)
                {
                    case VirtioNet.CtrlRxPromisc: filter.Promiscuous = on; return VirtioNet.Ok;
                    case VirtioNet.CtrlRxAllMulti: filter.AllMulticast = on; return VirtioNet.Ok;
                    case VirtioNet.CtrlRxAllUni: filter.AllUnicast = on; return VirtioNet.Ok;
                    case VirtioNet.CtrlRxNoMulti: filter.NoMulticast = on; return VirtioNet.Ok;
                    case VirtioNet.CtrlRxNoUni: filter.NoUnicast = on; return VirtioNet.Ok;
                    case VirtioNet.CtrlRxNoBcast: filter.NoBroadcast = on; return VirtioNet.Ok;
                }
                return VirtioNet.Err;
            case VirtioNet.CtrlMac when command == VirtioNet.CtrlMacAddrSet && data.Length == 6:
                var mac = Mac.Read(data);
                if (mac.IsMulticast || mac.IsZero)
                    return VirtioNet.Err;
                device.SetMac(mac);
                return VirtioNet.Ok;
            case VirtioNet.CtrlMac when command == VirtioNet.CtrlMacTableSet:
                return filter.SetTables(data) ? VirtioNet.Ok : VirtioNet.Err;
            case VirtioNet.CtrlAnnounce when command == VirtioNet.CtrlAnnounceAck && data.IsEmpty:
                device.AcknowledgeAnnounce();
                return VirtioNet.Ok;
            case NetMemberControl.TrustClass when command == 0 && data.Length == 1 && data[0] <= 1:
                device.Trusted = data[0] == 1;
                return VirtioNet.Ok;
            case NetMemberControl.LinkClass when command == 0 && data.Length == 1 && data[0] <= 1:
                device.SetLink(data[0] == 1);
                return VirtioNet.Ok;
            case VirtioNet.CtrlMq when command == VirtioNet.CtrlMqVqPairsSet && data.Length == 2:
                return device.SetActivePairs(BinaryPrimitives.ReadUInt16LittleEndian(data)) ? VirtioNet.Ok : VirtioNet.Err;
            default:
                return VirtioNet.Err;
        }
    }
}
