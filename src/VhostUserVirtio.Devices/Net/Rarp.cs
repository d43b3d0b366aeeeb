using System.Buffers.Binary;
using VhostUserVirtio.Devices.Switch;

namespace VhostUserVirtio.Devices.Net;

/// <summary>The reverse-ARP announcement QEMU asks for after migration (SEND_RARP), so switches relearn the guest's port.</summary>
public static class Rarp
{
    public const ushort EtherType = 0x8035;

    /// <summary>Writes a broadcast RARP "request reverse" for <paramref name="mac"/> into a 60-byte frame.</summary>
    public static void Build(Mac mac, Span<byte> frame)
    {
        frame[..60].Clear();
        Mac.Broadcast.Write(frame);
        mac.Write(frame[6..]);
        BinaryPrimitives.WriteUInt16BigEndian(frame[12..], EtherType);
        BinaryPrimitives.WriteUInt16BigEndian(frame[14..], 1);       // hardware type: Ethernet
        BinaryPrimitives.WriteUInt16BigEndian(frame[16..], 0x0800);  // protocol type: IPv4
        frame[18] = 6;                                                 // hardware address length
        frame[19] = 4;                                                 // protocol address length
        BinaryPrimitives.WriteUInt16BigEndian(frame[20..], 3);       // operation: request reverse
        mac.Write(frame[22..]);                                        // sender hardware address
        mac.Write(frame[32..]);                                        // target hardware address
    }
}
