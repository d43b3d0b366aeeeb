using System.Buffers.Binary;
namespace VhostUserVirtio.Protocol;

/// <summary>A set of opcodes as the LIST_QUERY/LIST_USE bitmap (le64 words, bit n = opcode n).</summary>
public readonly record struct AdminOpcodeSet(ulong Word0, ulong Word1)
{
    /// <summary>Opcodes representable here (0..127): enough for 0x0–0x11 and this project's block at 0x40.</summary>
    public const int Capacity = 128;

    public static AdminOpcodeSet Of(params AdminOpcode[] opcodes)
    {
        ulong w0 = 0, w1 = 0;
        foreach (var op in opcodes)
        {
            int n = (int)op;
            if (n < 64) w0 |= 1UL << n; else w1 |= 1UL << (n - 64);
        }
        return new AdminOpcodeSet(w0, w1);
    }

    public bool Contains(ushort opcode) => opcode < 64 ? (Word0 & (1UL << opcode)) != 0 :
        opcode < Capacity && (Word1 & (1UL << (opcode - 64))) != 0;

    public bool IsSubsetOf(AdminOpcodeSet other) => (Word0 & ~other.Word0) == 0 && (Word1 & ~other.Word1) == 0;

    /// <summary>Bytes the bitmap needs: enough le64 words to cover the largest opcode.</summary>
    public int WireLength => Word1 != 0 ? 16 : 8;

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(destination, Word0);
        if (destination.Length >= 16)
            BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], Word1);
    }

    /// <summary>
    /// Reads a bitmap of any length. Returns false when a bit is set beyond what this set can hold
    /// (an opcode no group supports).
    /// </summary>
    public static bool TryRead(ReadOnlySpan<byte> data, out AdminOpcodeSet set)
    {
        Span<byte> padded = stackalloc byte[16];
        padded.Clear();
        data[..Math.Min(16, data.Length)].CopyTo(padded);
        set = new AdminOpcodeSet(BinaryPrimitives.ReadUInt64LittleEndian(padded), BinaryPrimitives.ReadUInt64LittleEndian(padded[8..]));
        for (int i = 16; i < data.Length; i++)
            if (data[i] != 0)
                return false;
        return true;
    }
}
