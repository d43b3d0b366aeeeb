using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Devices.Switch;

/// <summary>
/// An Ethernet frame on its way through the switch, wherever its bytes are: in a transmit chain in
/// the sender's guest memory (after the virtio-net header), or in a plain buffer (TAP, RARP). Ports
/// copy it straight from there into their receive buffers: the only copy on the path.
/// </summary>
public readonly ref struct Frame
{
    private readonly DescriptorChain? _chain;
    private readonly uint _offset;
    private readonly ReadOnlySpan<byte> _bytes;

    public Frame(DescriptorChain chain, uint offset)
    {
        _chain = chain;
        _offset = offset;
        _bytes = default;
        Length = (int)(chain.ReadableLength - offset);
    }

    public Frame(ReadOnlySpan<byte> bytes)
    {
        _chain = null;
        _offset = 0;
        _bytes = bytes;
        Length = bytes.Length;
    }

    public int Length { get; }

    /// <summary>Copies the first bytes (e.g. the Ethernet header) into <paramref name="destination"/>; returns how many.</summary>
    public int CopyPrefix(scoped Span<byte> destination)
    {
        if (_chain == null)
        {
            int n = Math.Min(destination.Length, _bytes.Length);
            _bytes[..n].CopyTo(destination);
            return n;
        }
        var reader = _chain.Reader();
        reader.Skip((int)_offset);
        return reader.Read(destination);
    }

    /// <summary>A cursor over the frame's bytes, for copying it into one or more receive chains.</summary>
    public FrameReader OpenReader()
    {
        if (_chain == null)
            return new FrameReader(_bytes);
        var reader = _chain.Reader();
        reader.Skip((int)_offset);
        return new FrameReader(reader);
    }

    /// <summary>Copies the whole frame into <paramref name="destination"/> (which must be large enough).</summary>
    public int CopyTo(scoped Span<byte> destination)
    {
        var r = OpenReader();
        return r.Read(destination);
    }
}

/// <summary>Position in a <see cref="Frame"/>; each copy continues where the last one stopped.</summary>
public ref struct FrameReader
{
    private ChainReader _chain;
    private readonly bool _fromChain;
    private ReadOnlySpan<byte> _bytes;

    internal FrameReader(ChainReader chain)
    {
        _chain = chain;
        _fromChain = true;
        _bytes = default;
    }

    internal FrameReader(ReadOnlySpan<byte> bytes)
    {
        _chain = default;
        _fromChain = false;
        _bytes = bytes;
    }

    /// <summary>Copies as much as fits into <paramref name="writer"/>; returns bytes copied.</summary>
    public int CopyTo(ref ChainWriter writer)
    {
        if (_fromChain)
            return writer.CopyFrom(ref _chain);
        int n = writer.Write(_bytes);
        _bytes = _bytes[n..];
        return n;
    }

    /// <summary>Copies into a plain buffer; returns bytes copied.</summary>
    public int Read(scoped Span<byte> destination)
    {
        if (_fromChain)
            return _chain.Read(destination);
        int n = Math.Min(destination.Length, _bytes.Length);
        _bytes[..n].CopyTo(destination);
        _bytes = _bytes[n..];
        return n;
    }
}
