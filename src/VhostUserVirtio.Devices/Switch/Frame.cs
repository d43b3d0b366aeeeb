using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Devices.Switch;

/// <summary>
/// An Ethernet frame on its way through the switch, wherever its bytes are: in a transmit chain in
/// the sender's guest memory (after the virtio-net header), or in a plain buffer (TAP, RARP). Ports
/// copy it straight from there into their receive buffers: the only copy on the path.
///
/// The two addresses are read once, when the frame is made, and every decision (spoof check,
/// learning, lookup, receive filter) and every delivery uses that copy: the sender may rewrite its
/// buffer while the switch works, but a receiver gets exactly the addresses the switch decided on.
/// Only the bytes after them come from the sender's memory at copy time.
/// </summary>
public readonly ref struct Frame
{
    /// <summary>Destination and source MAC: the bytes the frame carries a copy of.</summary>
    public const int AddressesLength = 12;
    /// <summary>An Ethernet header: the addresses and the EtherType.</summary>
    public const int MinLength = 14;
    /// <summary>The largest frame any port takes: the largest virtio-net MTU plus the Ethernet header and one VLAN tag.</summary>
    public const int MaxLength = 65535 + 14 + 4;

    private readonly DescriptorChain? _chain;
    private readonly uint _offset;
    private readonly ReadOnlySpan<byte> _bytes;

    /// <summary>
    /// The frame in <paramref name="chain"/>'s readable bytes from <paramref name="offset"/> to their
    /// end; reads its addresses now. Throws if that length is not within
    /// <see cref="MinLength"/>..<see cref="MaxLength"/>: callers drop runts and oversize frames first.
    /// </summary>
    public Frame(DescriptorChain chain, uint offset)
    {
        ArgumentNullException.ThrowIfNull(chain);
        _chain = chain;
        _offset = offset;
        _bytes = default;
        Length = CheckedLength(chain, offset);
        Span<byte> addresses = stackalloc byte[AddressesLength];
        var reader = chain.Reader();
        reader.Skip((int)offset);
        reader.Read(addresses);
        Destination = Mac.Read(addresses);
        Source = Mac.Read(addresses[6..]);
    }

    /// <summary>As above, with the addresses the caller has just read from the chain (one walk of it for the virtio-net header and them).</summary>
    internal Frame(DescriptorChain chain, uint offset, ReadOnlySpan<byte> addresses)
    {
        _chain = chain;
        _offset = offset;
        _bytes = default;
        Length = CheckedLength(chain, offset);
        Destination = Mac.Read(addresses);
        Source = Mac.Read(addresses[6..]);
    }

    /// <summary>A frame in a buffer of our own (TAP read, RARP). Throws if its length is not within <see cref="MinLength"/>..<see cref="MaxLength"/>.</summary>
    public Frame(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length < MinLength || bytes.Length > MaxLength)
            throw new ArgumentOutOfRangeException(nameof(bytes), $"a frame is {MinLength}..{MaxLength} bytes, not {bytes.Length}");
        _chain = null;
        _offset = 0;
        _bytes = bytes;
        Length = bytes.Length;
        Destination = Mac.Read(bytes);
        Source = Mac.Read(bytes[6..]);
    }

    public int Length { get; }
    public Mac Destination { get; }
    public Mac Source { get; }

    /// <summary>
    /// The sender's checked offload request (checksum to complete, GSO to segment), or none. A frame
    /// longer than an MTU allows is always a GSO frame; a port that cannot take the request as it is
    /// resolves it (<see cref="Net.Offload.SoftwareOffload"/>).
    /// </summary>
    public NetHeader Offload { get; init; }

    /// <summary>The frame's length in unsigned arithmetic (a chain may hold up to 4 GiB), refused unless it fits a frame.</summary>
    private static int CheckedLength(DescriptorChain chain, uint offset)
    {
        ulong length = offset <= chain.ReadableLength ? (ulong)chain.ReadableLength - offset : 0;
        if (length < MinLength || length > MaxLength || offset > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"a frame is {MinLength}..{MaxLength} bytes; this chain holds {chain.ReadableLength} readable bytes from offset {offset}");
        return (int)length;
    }

    /// <summary>A cursor over the frame's bytes, for copying it into one or more receive chains.</summary>
    public FrameReader OpenReader()
    {
        if (_chain == null)
            return new FrameReader(_bytes[AddressesLength..], Destination, Source);
        var reader = _chain.Reader();
        reader.Skip((int)_offset + AddressesLength);
        return new FrameReader(reader, Destination, Source);
    }

    /// <summary>
    /// The bytes after the addresses, when they lie in one place: a plain buffer, or one segment of
    /// the chain that was translated when the chain was validated. False otherwise (use a reader).
    /// Read at copy time, like a reader's bytes: only the addresses are the frame's own copy.
    /// </summary>
    public bool TryGetRest(out ReadOnlySpan<byte> rest)
    {
        if (_chain == null)
        {
            rest = _bytes[AddressesLength..];
            return true;
        }
        return _chain.TryGetReadable(_offset + (uint)AddressesLength, Length - AddressesLength, out rest);
    }

    /// <summary>Writes the frame's copy of its addresses (destination, source) into <paramref name="destination"/>.</summary>
    public void WriteAddresses(Span<byte> destination)
    {
        Destination.Write(destination);
        Source.Write(destination[6..]);
    }

    /// <summary>Copies the whole frame into <paramref name="destination"/> (which must be large enough).</summary>
    public int CopyTo(scoped Span<byte> destination)
    {
        var r = OpenReader();
        return r.Read(destination);
    }
}

/// <summary>
/// Position in a <see cref="Frame"/>; each copy continues where the last one stopped. The first
/// <see cref="Frame.AddressesLength"/> bytes come from the frame's copy of the addresses, the rest
/// from where the frame lies.
/// </summary>
public ref struct FrameReader
{
    private ChainReader _chain;
    private readonly bool _fromChain;
    private ReadOnlySpan<byte> _bytes;
    private readonly Mac _destination;
    private readonly Mac _source;
    private int _addressesLeft;

    internal FrameReader(ChainReader afterAddresses, Mac destination, Mac source)
    {
        _chain = afterAddresses;
        _fromChain = true;
        _bytes = default;
        _destination = destination;
        _source = source;
        _addressesLeft = Frame.AddressesLength;
    }

    internal FrameReader(ReadOnlySpan<byte> afterAddresses, Mac destination, Mac source)
    {
        _chain = default;
        _fromChain = false;
        _bytes = afterAddresses;
        _destination = destination;
        _source = source;
        _addressesLeft = Frame.AddressesLength;
    }

    /// <summary>Copies as much as fits into <paramref name="writer"/>; returns bytes copied.</summary>
    public int CopyTo(ref ChainWriter writer)
    {
        int done = 0;
        if (_addressesLeft > 0)
        {
            Span<byte> addresses = stackalloc byte[Frame.AddressesLength];
            WriteAddresses(addresses);
            int n = writer.Write(addresses[(Frame.AddressesLength - _addressesLeft)..]);
            _addressesLeft -= n;
            done += n;
            if (_addressesLeft > 0)
                return done; // the writer is full
        }
        if (_fromChain)
            return done + writer.CopyFrom(ref _chain);
        int m = writer.Write(_bytes);
        _bytes = _bytes[m..];
        return done + m;
    }

    /// <summary>Copies into a plain buffer; returns bytes copied.</summary>
    public int Read(scoped Span<byte> destination)
    {
        int done = 0;
        if (_addressesLeft > 0)
        {
            Span<byte> addresses = stackalloc byte[Frame.AddressesLength];
            WriteAddresses(addresses);
            var left = addresses[(Frame.AddressesLength - _addressesLeft)..];
            int n = Math.Min(left.Length, destination.Length);
            left[..n].CopyTo(destination);
            _addressesLeft -= n;
            done = n;
            destination = destination[n..];
            if (_addressesLeft > 0)
                return done;
        }
        if (_fromChain)
            return done + _chain.Read(destination);
        int m = Math.Min(destination.Length, _bytes.Length);
        _bytes[..m].CopyTo(destination);
        _bytes = _bytes[m..];
        return done + m;
    }

    private readonly void WriteAddresses(Span<byte> addresses)
    {
        _destination.Write(addresses);
        _source.Write(addresses[6..]);
    }
}
