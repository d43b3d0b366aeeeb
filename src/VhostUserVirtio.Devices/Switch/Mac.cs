using System.Buffers.Binary;

namespace VhostUserVirtio.Devices.Switch;

/// <summary>A MAC address held in the low 48 bits of a ulong (first octet most significant), so lookups allocate nothing.</summary>
public readonly record struct Mac(ulong Value)
{
    public static readonly Mac Broadcast = new(0xffff_ffff_ffff);

    public static Mac Read(ReadOnlySpan<byte> b) =>
        new(((ulong)BinaryPrimitives.ReadUInt16BigEndian(b) << 32) | BinaryPrimitives.ReadUInt32BigEndian(b[2..]));

    public void Write(Span<byte> b)
    {
        BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)(Value >> 32));
        BinaryPrimitives.WriteUInt32BigEndian(b[2..], (uint)Value);
    }

    /// <summary>Group bit: broadcast and multicast.</summary>
    public bool IsMulticast => (Value & 0x0100_0000_0000) != 0;
    public bool IsBroadcast => Value == Broadcast.Value;
    public bool IsZero => Value == 0;

    public static Mac Parse(string text) =>
        TryParse(text, out var mac) ? mac : throw new FormatException($"'{text}' is not a MAC address (six hex octets)");

    /// <summary>Six octets of one or two hex digits separated by ':' or '-'; false for anything else (empty octets, signs, spaces).</summary>
    public static bool TryParse(string? text, out Mac mac)
    {
        mac = default;
        var parts = text?.Split(':', '-');
        if (parts is not { Length: 6 })
            return false;
        ulong v = 0;
        foreach (var p in parts)
        {
            if (p.Length is < 1 or > 2 || !byte.TryParse(p, System.Globalization.NumberStyles.AllowHexSpecifier, System.Globalization.CultureInfo.InvariantCulture, out byte octet))
                return false;
            v = (v << 8) | octet;
        }
        mac = new Mac(v);
        return true;
    }

    public override string ToString()
    {
        Span<byte> b = stackalloc byte[6];
        Write(b);
        return $"{b[0]:x2}:{b[1]:x2}:{b[2]:x2}:{b[3]:x2}:{b[4]:x2}:{b[5]:x2}";
    }
}
