namespace VhostUserVirtio.Fuzz;

/// <summary>
/// Reads a fuzzer's input front to back. Past the end everything reads as zeros, so every input,
/// however short, decodes to something and the targets need no length checks of their own.
/// </summary>
public ref struct FuzzInput(ReadOnlySpan<byte> data)
{
    private ReadOnlySpan<byte> _rest = data;

    public readonly bool IsEmpty => _rest.IsEmpty;
    public readonly int Remaining => _rest.Length;

    public byte Byte()
    {
        if (_rest.IsEmpty)
            return 0;
        byte b = _rest[0];
        _rest = _rest[1..];
        return b;
    }

    public ushort U16() => (ushort)Little(2);
    public uint U32() => (uint)Little(4);
    public ulong U64() => Little(8);

    /// <summary>Up to <paramref name="count"/> bytes (fewer at the end of the input).</summary>
    public ReadOnlySpan<byte> Take(int count)
    {
        var taken = _rest[..Math.Min(Math.Max(count, 0), _rest.Length)];
        _rest = _rest[taken.Length..];
        return taken;
    }

    /// <summary>Everything left.</summary>
    public ReadOnlySpan<byte> Rest()
    {
        var rest = _rest;
        _rest = default;
        return rest;
    }

    /// <summary>A little-endian value of <paramref name="bytes"/> bytes, the missing high ones zero.</summary>
    private ulong Little(int bytes)
    {
        var taken = Take(bytes);
        ulong value = 0;
        for (int i = taken.Length - 1; i >= 0; i--)
            value = value << 8 | taken[i];
        return value;
    }
}

/// <summary>A broken invariant the fuzzer must report as a crash (a target never throws otherwise).</summary>
public sealed class FuzzInvariantException(string message) : Exception(message)
{
    public static void Check(bool condition, string what)
    {
        if (!condition)
            throw new FuzzInvariantException(what);
    }
}
