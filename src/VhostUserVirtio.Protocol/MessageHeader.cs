using System.Buffers.Binary;

namespace VhostUserVirtio.Protocol;

/// <summary>The 12-byte vhost-user header: request, flags, payload size (all native-endian u32).</summary>
public readonly record struct MessageHeader(uint Request, uint Flags, uint Size)
{
    public const int Length = 12;
    public const uint VersionMask = 0x3;
    public const uint Version = 0x1;
    public const uint ReplyFlag = 0x4;
    public const uint NeedReplyFlag = 0x8;
    /// <summary>Largest payload accepted on the wire; larger means a corrupt or hostile stream.</summary>
    public const int MaxPayload = 0x1000;
    /// <summary>QEMU's VHOST_MEMORY_BASELINE_NREGIONS; also the most descriptors one message may carry.</summary>
    public const int MaxFds = 8;

    public bool NeedsReply => (Flags & NeedReplyFlag) != 0;
    public bool IsReply => (Flags & ReplyFlag) != 0;

    public static MessageHeader Read(ReadOnlySpan<byte> s) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(s),
        BinaryPrimitives.ReadUInt32LittleEndian(s[4..]),
        BinaryPrimitives.ReadUInt32LittleEndian(s[8..]));

    public void Write(Span<byte> s)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(s, Request);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], Size);
    }

    /// <summary>Why this header cannot start a valid message from a front end, or null if it can.</summary>
    public string? FramingError()
    {
        if ((Flags & VersionMask) != Version)
            return $"protocol version {Flags & VersionMask}, expected {Version}";
        if ((Flags & ~(VersionMask | NeedReplyFlag)) != 0)
            return $"reserved or reply flag bits set (flags 0x{Flags:x})";
        if (Size > MaxPayload)
            return $"payload size {Size} exceeds the {MaxPayload}-byte limit";
        return null;
    }
}
