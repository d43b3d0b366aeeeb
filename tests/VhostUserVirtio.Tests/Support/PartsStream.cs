using System.Buffers;
using System.Buffers.Binary;
using VhostUserVirtio.Group.Migration;

namespace VhostUserVirtio.Tests.Support;

/// <summary>A device parts stream as tests take it apart: encode, read, split into records, join.</summary>
public static class PartsStream
{
    public static byte[] Encode(NetMemberState state)
    {
        using var sequence = DevicePartsWriter.Build(state);
        return sequence.AsReadOnlySequence.ToArray();
    }

    public static DeviceStateError? Read(byte[] bytes, NetMemberShape shape, out NetMemberState? state) =>
        DevicePartsReader.TryRead(new ReadOnlySequence<byte>(bytes), shape, out state);

    /// <summary>The stream's records (header + value), in stream order.</summary>
    public static List<byte[]> Records(byte[] stream)
    {
        var records = new List<byte[]>();
        for (int at = 0; at < stream.Length;)
        {
            int length = DeviceParts.HeaderSize + (int)BinaryPrimitives.ReadUInt32LittleEndian(stream.AsSpan(at + 12));
            records.Add(stream[at..(at + length)]);
            at += length;
        }
        return records;
    }

    public static byte[] Join(IEnumerable<byte[]> records) => [.. records.SelectMany(r => r)];
}
