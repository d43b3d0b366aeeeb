using System.Buffers.Binary;
using VhostUserVirtio.Devices.Switch;

namespace VhostUserVirtio.Devices.Net;

/// <summary>
/// What a virtio-net device accepts on receive (VIRTIO 5.1.6.5.1–5.1.6.5.2): its MAC, the MAC
/// filter table, and the promiscuous / all-multicast / no-broadcast modes set by the driver's
/// control queue. Until a driver sets a filter the device is promiscuous: with vhost-user the
/// guest's MAC usually lives in the VMM, not here, so filtering on a guessed MAC would drop traffic.
/// </summary>
public sealed class NetReceiveFilter
{
    private const int MaxTableEntries = 64;
    private ulong[] _unicast = Array.Empty<ulong>();
    private ulong[] _multicast = Array.Empty<ulong>();

    public bool Promiscuous { get; set; } = true;
    public bool AllMulticast { get; set; } = true;
    public bool AllUnicast { get; set; }
    public bool NoMulticast { get; set; }
    public bool NoUnicast { get; set; }
    public bool NoBroadcast { get; set; }
    /// <summary>The device's own MAC, when one is set (config, admin or VIRTIO_NET_CTRL_MAC_ADDR_SET).</summary>
    public Mac? Address { get; set; }

    /// <summary>The unicast MAC table (MAC_TABLE_SET), MACs in <see cref="Mac.Value"/> form.</summary>
    public ReadOnlySpan<ulong> UnicastTable => _unicast;
    /// <summary>The multicast MAC table (MAC_TABLE_SET).</summary>
    public ReadOnlySpan<ulong> MulticastTable => _multicast;

    public bool Accepts(Mac dst)
    {
        if (Promiscuous)
            return true;
        if (dst.IsBroadcast)
            return !NoBroadcast;
        if (dst.IsMulticast)
            return !NoMulticast && (AllMulticast || Array.IndexOf(_multicast, dst.Value) >= 0);
        if (NoUnicast)
            return false;
        return AllUnicast || (Address is { } own && own.Value == dst.Value) || Array.IndexOf(_unicast, dst.Value) >= 0;
    }

    /// <summary>
    /// VIRTIO_NET_CTRL_MAC_TABLE_SET: two tables {le32 entries; u8 macs[entries][6]}, unicast then
    /// multicast. Returns false (and changes nothing) when the data is malformed.
    /// </summary>
    public bool SetTables(ReadOnlySpan<byte> data)
    {
        if (!ReadTable(ref data, out var uni) || !ReadTable(ref data, out var multi) || !data.IsEmpty)
            return false;
        _unicast = uni;
        _multicast = multi;
        return true;
    }

    private static bool ReadTable(ref ReadOnlySpan<byte> data, out ulong[] macs)
    {
        macs = Array.Empty<ulong>();
        if (data.Length < 4)
            return false;
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(data);
        if (n > MaxTableEntries || data.Length - 4 < n * 6)
            return false;
        macs = new ulong[n];
        for (int i = 0; i < n; i++)
            macs[i] = Mac.Read(data.Slice(4 + 6 * i)).Value;
        data = data[(int)(4 + n * 6)..];
        return true;
    }

    public void Reset()
    {
        Promiscuous = AllMulticast = true;
        AllUnicast = NoMulticast = NoUnicast = NoBroadcast = false;
        _unicast = _multicast = Array.Empty<ulong>();
    }

    public override string ToString() =>
        Promiscuous ? "promiscuous" : $"mac {Address?.ToString() ?? "none"}, {_unicast.Length} uc, {_multicast.Length} mc{(AllMulticast ? ", allmulti" : "")}{(NoBroadcast ? ", nobcast" : "")}";
}
