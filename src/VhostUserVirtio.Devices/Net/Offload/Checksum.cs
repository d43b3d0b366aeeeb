using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace VhostUserVirtio.Devices.Net.Offload;

/// <summary>
/// The Internet checksum (RFC 1071). Words are summed as loaded (little endian): a one's-complement
/// sum does not depend on byte order (RFC 1071 2(B)), so the folded sum written back little endian
/// lands as the big-endian checksum, with no swap per word.
/// </summary>
public static class Checksum
{
    /// <summary>Adds <paramref name="data"/> to <paramref name="sum"/>; data must start at an even offset of what is summed.</summary>
    public static ulong Add(ReadOnlySpan<byte> data, ulong sum = 0)
    {
        // Two 32-bit halves per 64-bit load: the 64-bit accumulator cannot overflow below 2^32 loads.
        var words = MemoryMarshal.Cast<byte, ulong>(data);
        foreach (ulong w in words)
            sum += (uint)w + (w >> 32);
        int i = words.Length * 8;
        for (; i + 1 < data.Length; i += 2)
            sum += BinaryPrimitives.ReadUInt16LittleEndian(data[i..]);
        if (i < data.Length)
            sum += data[i]; // the odd byte is the high-order byte of a zero-padded big-endian word
        return sum;
    }

    /// <summary>Adds a 16-bit value given in host order (a length, a protocol number) as the big-endian word it stands for.</summary>
    public static ulong AddWord(ulong sum, ushort value) => sum + BinaryPrimitives.ReverseEndianness(value);

    /// <summary>Folds a sum to 16 bits (still in load order).</summary>
    public static ushort Fold(ulong sum)
    {
        while (sum >> 16 != 0)
            sum = (sum & 0xffff) + (sum >> 16);
        return (ushort)sum;
    }

    /// <summary>Stores the complement of a folded sum into a 2-byte checksum field, 0 written as 0xffff (as Linux's skb_checksum_help does: for UDP, 0 means none).</summary>
    public static void Store(Span<byte> field, ulong sum)
    {
        ushort c = (ushort)~Fold(sum);
        BinaryPrimitives.WriteUInt16LittleEndian(field, c == 0 ? (ushort)0xffff : c);
    }

    /// <summary>
    /// Completes a NEEDS_CSUM frame: sums from <paramref name="start"/> to the end (the field at
    /// start + offset holds the pseudo-header's sum the driver left there) and stores the result in
    /// that field. False, with nothing written, if the field is not inside the frame.
    /// </summary>
    public static bool Complete(Span<byte> frame, int start, int offset)
    {
        if (start < 0 || offset < 0 || start + offset + 2 > frame.Length)
            return false;
        Store(frame.Slice(start + offset, 2), Add(frame[start..]));
        return true;
    }
}
