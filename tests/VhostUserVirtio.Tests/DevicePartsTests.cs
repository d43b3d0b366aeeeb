using System.Buffers;
using System.Collections.Immutable;
using CsCheck;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Group.Migration;

using static VhostUserVirtio.Tests.Support.PartsStream;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A virtio-net member's state as device parts (VIRTIO 1.4 "Device parts", virtio-admin.md §6):
/// the record format, the mandated order, and a reader that refuses every malformed stream with a
/// typed error. Properties run over generated states of generated device shapes.
/// </summary>
[Trait("tier", "unit")]
public sealed class DevicePartsTests
{
    // ---- generators ----

    private static readonly Gen<NetMemberShape> Shapes =
        from pairs in Gen.Int[1, 4]
        from control in Gen.Bool
        from log in Gen.Int[4, 10]
        from features in Gen.ULong
        select new NetMemberShape(features, 2 * pairs + (control ? 1 : 0), pairs, 1 << log, 64);

    private static Gen<VirtqueueState> Queue(NetMemberShape shape, ushort msix) =>
        from used in Gen.Frequency((1, Gen.Const(false)), (4, Gen.Const(true)))
        from vector in Gen.Frequency((1, Gen.Const((ushort)0xFFFF)), (3, Gen.UShort[0, (ushort)(msix - 1)]))
        from log in Gen.Int[0, 30 - System.Numerics.BitOperations.LeadingZeroCount((uint)shape.MaxQueueSize) + 1]
        from enabled in Gen.Bool
        from desc in Gen.ULong
        from driver in Gen.ULong
        from device in Gen.ULong
        select used
            ? new VirtqueueState((ushort)(1 << log), vector, enabled, desc & ~15UL, driver & ~1UL, device & ~3UL)
            : VirtqueueState.Unused with { Vector = vector };

    private static readonly Gen<Mac> AnyMac = Gen.ULong[0, 0xffff_ffff_ffff].Select(v => new Mac(v));

    private static readonly Gen<Mac?> OwnMac = Gen.Frequency(
        (1, Gen.Const((Mac?)null)),
        (4, Gen.ULong[1, 0xffff_ffff_ffff].Select(v => (Mac?)new Mac((v & ~0x0100_0000_0000UL) | 0x0200_0000_0000UL))));

    private static readonly Gen<MemberCounters> Counters =
        from five in Gen.Long[0, long.MaxValue].Array[5]
        from drops in Gen.Long[0, long.MaxValue].Array[MemberCounters.DropReasons]
        select new MemberCounters(five[0], five[1], five[2], five[3], five[4], [.. drops]);

    private static Gen<NetMemberState> States(NetMemberShape shape) =>
        from msix in Gen.UShort[1, 64]
        from queues in Queue(shape, msix).Array[shape.QueueCount]
        from configVector in Gen.Frequency((1, Gen.Const((ushort)0xFFFF)), (3, Gen.UShort[0, (ushort)(msix - 1)]))
        from driver in Gen.ULong
        from status in Gen.Byte
        from mac in OwnMac
        from unicast in AnyMac.Array[0, 64]
        from multicast in AnyMac.Array[0, 64]
        from modes in Gen.Bool.Array[6]
        from pairs in Gen.Int[1, shape.QueuePairs]
        from link in Gen.Bool
        from trusted in Gen.Bool
        from counters in Counters
        select new NetMemberState
        {
            DeviceFeatures = shape.DeviceFeatures,
            DriverFeatures = driver & shape.DeviceFeatures,
            ConfigVector = configVector,
            Status = (byte)(status & ~0x30),
            Queues = [.. queues],
            Mac = mac,
            UnicastTable = [.. unicast],
            MulticastTable = [.. multicast],
            Modes = new ReceiveModes(modes[0], modes[1], modes[2], modes[3], modes[4], modes[5]),
            ActivePairs = (ushort)pairs,
            LinkUp = link,
            Trusted = trusted,
            MsixVectors = msix,
            Counters = counters,
        };

    private static readonly Gen<(NetMemberShape Shape, NetMemberState State)> Cases =
        from shape in Shapes
        from state in States(shape)
        select (shape, state);

    // ---- helpers ----

    private static DeviceStateErrorKind RefusalOf(byte[] bytes, NetMemberShape shape)
    {
        var error = Read(bytes, shape, out var state);
        Assert.Null(state);
        Assert.NotNull(error);
        return error!.Value.Kind;
    }

    /// <summary>A sequence of many segments, cut at the given offsets, as a stream arriving in pieces would be.</summary>
    private static ReadOnlySequence<byte> Segmented(byte[] bytes, IEnumerable<int> cuts)
    {
        var points = cuts.Where(c => c > 0 && c < bytes.Length).Distinct().Order().Append(bytes.Length).ToArray();
        Segment? first = null, last = null;
        int from = 0;
        foreach (int to in points)
        {
            var segment = new Segment(bytes.AsMemory(from, to - from), last);
            first ??= segment;
            last = segment;
            from = to;
        }
        return first == null ? ReadOnlySequence<byte>.Empty : new ReadOnlySequence<byte>(first, 0, last!, last!.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, Segment? previous)
        {
            Memory = memory;
            if (previous != null)
            {
                RunningIndex = previous.RunningIndex + previous.Memory.Length;
                previous.Next = this;
            }
        }
    }

    // ---- properties ----

    [Fact]
    public void A_state_read_back_from_its_parts_is_the_same_state()
    {
        Cases.Sample(c =>
        {
            Assert.Null(Read(Encode(c.State), c.Shape, out var back));
            Assert.Equal(c.State, back);
        });
    }

    [Fact]
    public void Parts_split_into_any_segments_read_as_the_same_state()
    {
        Gen.Select(Cases, Gen.Int[0, 4000].Array[0, 20]).Sample((c, cuts) =>
        {
            Assert.Null(DevicePartsReader.TryRead(Segmented(Encode(c.State), cuts), c.Shape, out var back));
            Assert.Equal(c.State, back);
        });
    }

    [Fact]
    public void The_stream_length_never_exceeds_the_size_reported_for_the_device()
    {
        Cases.Sample(c => Encode(c.State).Length <= DevicePartsWriter.MaxLength(c.Shape));
    }

    [Fact]
    public void Every_truncated_stream_is_refused_as_truncated_or_missing_a_part()
    {
        Gen.Select(Cases, Gen.Double[0, 1]).Sample((c, where) =>
        {
            var bytes = Encode(c.State);
            int cut = (int)(where * (bytes.Length - 1));
            var kind = RefusalOf(bytes[..cut], c.Shape);
            Assert.True(kind is DeviceStateErrorKind.Truncated or DeviceStateErrorKind.Missing, $"cut at {cut}: {kind}");
        });
    }

    [Fact]
    public void Parts_from_a_device_with_another_queue_count_are_refused_as_a_shape_mismatch()
    {
        Gen.Select(Cases, Gen.Int[1, 3]).Sample((c, more) =>
        {
            var other = c.Shape with { QueueCount = c.Shape.QueueCount + more, QueuePairs = c.Shape.QueuePairs + more };
            Assert.Equal(DeviceStateErrorKind.ShapeMismatch, RefusalOf(Encode(c.State), other));
            if (c.Shape.QueueCount > 2)
                Assert.Equal(DeviceStateErrorKind.ShapeMismatch, RefusalOf(Encode(c.State), c.Shape with { QueueCount = c.Shape.QueueCount - 1 }));
        });
    }

    [Fact]
    public void Two_parts_swapped_are_refused_as_out_of_order()
    {
        Gen.Select(Cases, Gen.Double[0, 1], Gen.Double[0, 1]).Sample((c, a, b) =>
        {
            var records = Records(Encode(c.State));
            int i = (int)(a * (records.Count - 1)), j = (int)(b * (records.Count - 1));
            if (i == j)
                return;
            (records[i], records[j]) = (records[j], records[i]);
            Assert.Equal(DeviceStateErrorKind.OutOfOrder, RefusalOf([.. records.SelectMany(r => r)], c.Shape));
        });
    }

    [Fact]
    public void A_part_given_twice_is_refused_as_a_duplicate()
    {
        Gen.Select(Cases, Gen.Double[0, 1]).Sample((c, a) =>
        {
            var records = Records(Encode(c.State));
            int i = (int)(a * (records.Count - 1));
            records.Insert(i, records[i]);
            Assert.Equal(DeviceStateErrorKind.Duplicate, RefusalOf([.. records.SelectMany(r => r)], c.Shape));
        });
    }

    [Fact]
    public void Any_corrupted_stream_is_either_refused_with_a_reason_or_read_as_a_valid_state()
    {
        Gen.Select(Cases, Gen.Int[0, 100_000].Select(Gen.Byte).Array[1, 8]).Sample((c, flips) =>
        {
            var bytes = Encode(c.State);
            foreach (var (at, value) in flips)
                bytes[at % bytes.Length] ^= value;
            var error = Read(bytes, c.Shape, out var state);
            Assert.True((error == null) != (state == null));
            if (state != null)
                Assert.Equal(state, ReadBack(state, c.Shape)); // whatever is accepted is a state this device writes the same way
        });

        static NetMemberState? ReadBack(NetMemberState state, NetMemberShape shape)
        {
            Assert.Null(Read(Encode(state), shape, out var back));
            return back;
        }
    }

    // ---- single cases ----

    private static readonly NetMemberShape SmallShape = new(0x1_2001_8028, QueueCount: 2, QueuePairs: 1, MaxQueueSize: 256, MaxMsixVectors: 64);

    /// <summary>A 1-pair member without a control queue, as in virtio-admin.md §6.4.</summary>
    private static readonly NetMemberState SmallState = new()
    {
        DeviceFeatures = 0x1_2001_8028,
        DriverFeatures = 0x1_0001_8020,
        ConfigVector = 0,
        Status = 0x0f,
        Queues = [new(256, 1, true, 0x10000, 0x11000, 0x12000), new(256, 2, true, 0x20000, 0x21000, 0x22000)],
        Mac = Mac.Parse("02:56:56:00:00:01"),
        MsixVectors = 4,
        Counters = MemberCounters.Zero with { TxPackets = 3 },
    };

    [Fact]
    public void The_byte_layout_of_a_small_state_follows_the_spec_record_format_and_order()
    {
        const string zeros8 = "00 00 00 00 00 00 00 00";
        string[] expected =
        [
            // §6.4 structure: DEV_FEATURES (OPTIONAL), DRV_FEATURES, PCI_COMMON_CFG 16 and 18, DEVICE_STATUS,
            // VQ_CFG per queue, VQ_NOTIFY_CFG per queue; hdr = le16 type, u8 flags, u8 reserved, selector[8], le32 length.
            "00 01 01 00 " + zeros8 + " 08 00 00 00   28 80 01 20 01 00 00 00",
            "01 01 00 00 " + zeros8 + " 08 00 00 00   20 80 01 00 01 00 00 00",
            "02 01 00 00 10 00 00 00 00 00 00 00 02 00 00 00   00 00",
            "02 01 00 00 12 00 00 00 00 00 00 00 02 00 00 00   02 00",
            "03 01 00 00 " + zeros8 + " 01 00 00 00   0f",
            "04 01 00 00 00 00 00 00 00 00 00 00 20 00 00 00   00 01 01 00 01 00 00 00  00 00 01 00 00 00 00 00  00 10 01 00 00 00 00 00  00 20 01 00 00 00 00 00",
            "04 01 00 00 01 00 00 00 00 00 00 00 20 00 00 00   00 01 02 00 01 00 00 00  00 00 02 00 00 00 00 00  00 10 02 00 00 00 00 00  00 20 02 00 00 00 00 00",
            "05 01 00 00 00 00 00 00 00 00 00 00 08 00 00 00   00 00 00 00 00 00 00 00",
            "05 01 00 00 01 00 00 00 00 00 00 00 08 00 00 00   01 00 01 00 00 00 00 00",
            // Net CVQ parts by (class, command): RX 0.0–0.5, MAC 1.0 TABLE_SET, MAC 1.1 ADDR_SET, MQ 4.0.
            "00 02 00 00 00 00 00 00 00 00 00 00 01 00 00 00   01",
            "00 02 00 00 00 01 00 00 00 00 00 00 01 00 00 00   01",
            "00 02 00 00 00 02 00 00 00 00 00 00 01 00 00 00   00",
            "00 02 00 00 00 03 00 00 00 00 00 00 01 00 00 00   00",
            "00 02 00 00 00 04 00 00 00 00 00 00 01 00 00 00   00",
            "00 02 00 00 00 05 00 00 00 00 00 00 01 00 00 00   00",
            "00 02 00 00 01 00 00 00 00 00 00 00 08 00 00 00   00 00 00 00 00 00 00 00",
            "00 02 00 00 01 01 00 00 00 00 00 00 06 00 00 00   02 56 56 00 00 01",
            "00 02 00 00 04 00 00 00 00 00 00 00 02 00 00 00   01 00",
            // Project parts: link, trust, MSI-X vectors, counters (OPTIONAL).
            "f0 05 00 00 " + zeros8 + " 01 00 00 00   01",
            "f1 05 00 00 " + zeros8 + " 01 00 00 00   00",
            "f2 05 00 00 " + zeros8 + " 08 00 00 00   04 00 00 00 00 00 00 00",
            "f3 05 01 00 " + zeros8 + " 80 00 00 00   03 00 00 00 00 00 00 00" + string.Concat(Enumerable.Repeat(" " + zeros8, 15)),
        ];
        var bytes = Encode(SmallState);
        Assert.Equal(expected.Select(Hex).ToArray(), Records(bytes).Select(r => Convert.ToHexString(r)).ToArray());
        Assert.Null(Read(bytes, SmallShape, out var back));
        Assert.Equal(SmallState, back);

        static string Hex(string spaced) => spaced.Replace(" ", "").ToUpperInvariant();
    }

    [Theory]
    [InlineData(0x0106, "00 00 00 00 00 00 00 00", 1, DeviceStateErrorKind.UnknownPart)]   // a common part this device lacks
    [InlineData(0x0200, "02 00 00 00 00 00 00 00", 1, DeviceStateErrorKind.UnknownPart)]   // CVQ VLAN ADD: not carried
    [InlineData(0x0600, "00 00 00 00 00 00 00 00", 1, DeviceStateErrorKind.UnknownPart)]   // reserved range
    [InlineData(0x0103, "00 00 00 00 00 00 00 01", 1, DeviceStateErrorKind.BadHeader)]     // selector bytes of a part without one
    [InlineData(0x0102, "14 00 00 00 00 00 00 00", 2, DeviceStateErrorKind.BadHeader)]     // PCI_COMMON_CFG offset not carried
    public void A_part_this_device_does_not_carry_is_refused(ushort type, string selector, uint length, DeviceStateErrorKind kind)
    {
        var records = Records(Encode(SmallState));
        var part = new byte[DeviceParts.HeaderSize + length];
        new DevicePartHeader(type, 0, BitConverter.ToUInt64(Convert.FromHexString(selector.Replace(" ", ""))), length).Write(part);
        records.Insert(records.Count - 1, part);
        Assert.Equal(kind, RefusalOf([.. records.SelectMany(r => r)], SmallShape));
    }

    [Fact]
    public void A_part_of_another_length_than_the_devices_is_refused_before_its_value_is_read()
    {
        var bytes = Encode(SmallState);
        bytes[4 * 16 + 8 + 8 + 2 + 2 + 12] = 2; // DEVICE_STATUS claims 2 bytes
        Assert.Equal(DeviceStateErrorKind.WrongLength, RefusalOf(bytes, SmallShape));
        bytes = Encode(SmallState);
        BitConverter.TryWriteBytes(bytes.AsSpan(12), uint.MaxValue); // DEV_FEATURES claims 4 GiB
        Assert.Equal(DeviceStateErrorKind.WrongLength, RefusalOf(bytes, SmallShape));
    }

    [Fact]
    public void Flags_and_the_reserved_byte_must_be_what_the_part_allows()
    {
        var bytes = Encode(SmallState);
        bytes[2] = 0; // DEV_FEATURES without OPTIONAL
        Assert.Equal(DeviceStateErrorKind.BadHeader, RefusalOf(bytes, SmallShape));
        bytes = Encode(SmallState);
        bytes[24 + 2] = 1; // DRV_FEATURES flagged OPTIONAL
        Assert.Equal(DeviceStateErrorKind.BadHeader, RefusalOf(bytes, SmallShape));
        bytes = Encode(SmallState);
        bytes[3] = 1;
        Assert.Equal(DeviceStateErrorKind.BadHeader, RefusalOf(bytes, SmallShape));
    }

    [Fact]
    public void Device_features_must_be_this_devices_and_driver_features_a_subset_of_them()
    {
        Assert.Equal(DeviceStateErrorKind.FeatureMismatch, RefusalOf(Encode(SmallState), SmallShape with { DeviceFeatures = 0x1_2001_8029 }));
        Assert.Equal(DeviceStateErrorKind.FeatureMismatch, RefusalOf(Encode(SmallState with { DriverFeatures = 1UL << 40 }), SmallShape));
    }

    [Fact]
    public void Vectors_beyond_the_members_msix_vectors_are_refused()
    {
        Assert.Equal(DeviceStateErrorKind.InvalidValue, RefusalOf(Encode(SmallState with { MsixVectors = 2 }), SmallShape));
        Assert.Equal(DeviceStateErrorKind.InvalidValue, RefusalOf(Encode(SmallState with { ConfigVector = 4 }), SmallShape));
        Assert.Null(Read(Encode(SmallState with { ConfigVector = 0xFFFF }), SmallShape, out _));
    }

    [Fact]
    public void Queue_sizes_addresses_and_flags_out_of_range_are_refused()
    {
        VirtqueueState q0 = SmallState.Queues[0];
        foreach (var bad in new[]
        {
            q0 with { Size = 512 },          // above the device's maximum
            q0 with { Size = 100 },          // not a power of two
            q0 with { Descriptors = 0x10008 }, // misaligned descriptor table
            q0 with { Device = 0x12002 },    // misaligned used ring
            VirtqueueState.Unused with { Enabled = true },
        })
        {
            var state = SmallState with { Queues = [bad, SmallState.Queues[1]] };
            Assert.Equal(DeviceStateErrorKind.InvalidValue, RefusalOf(Encode(state), SmallShape));
        }
    }

    [Fact]
    public void An_empty_stream_is_refused_as_missing_parts()
    {
        Assert.Equal(DeviceStateErrorKind.Missing, RefusalOf([], SmallShape));
    }

    [Fact]
    public void The_size_reported_for_a_device_covers_full_mac_tables()
    {
        var full = SmallState with
        {
            UnicastTable = [.. Enumerable.Range(0, 64).Select(i => new Mac(0x0200_0000_0000UL + (ulong)i))],
            MulticastTable = [.. Enumerable.Range(0, 64).Select(i => new Mac(0x0100_5e00_0000UL + (ulong)i))],
        };
        Assert.Equal(DevicePartsWriter.MaxLength(SmallShape), Encode(full).Length);
        // One entry more no longer fits the device's MAC_TABLE_SET length.
        Assert.Equal(DeviceStateErrorKind.WrongLength,
            RefusalOf(Encode(full with { UnicastTable = full.UnicastTable.Add(new Mac(0x0200_0000_1000)) }), SmallShape));
    }
}
