using System.Buffers;
using System.Buffers.Binary;
using VhostUserVirtio.Group.Migration;
using VhostUserVirtio.Tests.Support;

using static VhostUserVirtio.Tests.Support.PartsStream;

namespace VhostUserVirtio.Tests;

/// <summary>
/// VIRTIO 1.4 §6 (virtio-admin.md 6.1–6.3), statement by statement, for the streams this device
/// writes and the streams it accepts. Streams written are checked against the spec's rules by a
/// checker written from the spec text (not by the device's own reader); streams read are mutated
/// at every truncation point, every swap of two records and every removal of one record. Random
/// states come from a seeded <see cref="Random"/> whose seed a failure prints (DEVICE_PARTS_SEED replays it).
/// </summary>
[Trait("tier", "unit")]
public sealed class DevicePartsStreamTests
{

    private static DeviceStateErrorKind Refusal(byte[] bytes, NetMemberShape shape)
    {
        var error = Read(bytes, shape, out var state);
        Assert.True(error != null, "the stream was accepted");
        Assert.Null(state);
        return error!.Value.Kind;
    }

    private static (NetMemberShape Shape, NetMemberState State) Case(Random rng)
    {
        var shape = RandomMemberStates.Shape(rng);
        return (shape, RandomMemberStates.State(rng, shape, shape.MaxMsixVectors, withMac: rng.Next(5) != 0));
    }

    // ---- §6.1–6.3 as a checker written from the spec, run over the writer's streams ----

    /// <summary>
    /// The spec's rules for one stream of a device with <paramref name="queues"/> queues: 16-byte
    /// headers, values of the header's length, no padding; OPTIONAL only where allowed, reserved 0,
    /// unused selector bytes 0; each part's length, multiplicity and value layout; the §6.3 order.
    /// Returns the first rule broken, or null.
    /// </summary>
    private static string? SpecViolation(byte[] stream, int queues)
    {
        // §6.3: DEV_FEATURES, DRV_FEATURES, PCI_COMMON_CFG, DEVICE_STATUS, VQ_CFG, VQ_NOTIFY_CFG, then device-type parts.
        static int Rank(ushort type) => type switch { >= 0x100 and <= 0x105 => type - 0x100, >= 0x200 and <= 0x5ff => 6, _ => -1 };
        int at = 0, lastRank = -1;
        var seen = new HashSet<(ushort, ulong)>();
        var vqCfg = new HashSet<ulong>();
        var vqNotify = new HashSet<ulong>();
        int statuses = 0;
        while (at < stream.Length)
        {
            if (stream.Length - at < 16)
                return $"a header at {at} is cut";
            var b = stream.AsSpan(at);
            ushort type = BinaryPrimitives.ReadUInt16LittleEndian(b);
            byte flags = b[2];
            ulong selector = BinaryPrimitives.ReadUInt64LittleEndian(b[4..]);
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(b[12..]);
            if (length > stream.Length - at - 16)
                return $"part 0x{type:x} at {at} has a value of {length} bytes past the end";
            var v = b.Slice(16, (int)length);
            string where = $"part 0x{type:x} selector 0x{selector:x} at {at}";
            if (b[3] != 0) return $"{where}: reserved is not 0";
            if ((flags & ~1) != 0) return $"{where}: undefined flags";
            int rank = Rank(type);
            if (rank < 0) return $"{where}: a type in the reserved range, or a common type 1.4 does not define";
            if (rank < lastRank)
                return $"{where}: out of the mandated order";
            if (!seen.Add((type, selector))) return $"{where}: given twice";
            switch (type)
            {
                case 0x100: // DEV_FEATURES: le64 feature_bits[], OPTIONAL
                    if (flags != 1) return $"{where}: DEV_FEATURES without OPTIONAL";
                    if (selector != 0 || length == 0 || length % 8 != 0) return $"{where}: not le64[] without a selector";
                    break;
                case 0x101: // DRV_FEATURES: le64 feature_bits[]
                    if (selector != 0 || length == 0 || length % 8 != 0) return $"{where}: not le64[] without a selector";
                    break;
                case 0x102: // PCI_COMMON_CFG: {le32 offset; le32 reserved}, the field's bytes
                    if (selector >> 32 != 0) return $"{where}: reserved selector bytes";
                    int size = selector switch
                    {
                        0 or 4 or 8 or 12 => 4,                                 // feature selects and windows
                        16 or 18 or 22 or 24 or 26 or 28 or 30 or 56 or 58 => 2, // vectors, num_queues, queue_* le16 fields
                        20 or 21 => 1,                                          // device_status, config_generation
                        32 or 40 or 48 => 8,                                    // queue_desc, queue_driver, queue_device
                        _ => -1,
                    };
                    if (size < 0 || length != size) return $"{where}: not a field of virtio_pci_common_cfg, or not its size";
                    if (selector == 18 && BinaryPrimitives.ReadUInt16LittleEndian(v) != queues) return $"{where}: num_queues is not the device's";
                    break;
                case 0x103: // DEVICE_STATUS: u8, exactly one
                    statuses++;
                    if (selector != 0 || length != 1) return $"{where}: not a u8 without a selector";
                    break;
                case 0x104 or 0x105: // VQ_CFG / VQ_NOTIFY_CFG: {le16 index; u8 reserved[6]}
                    if (selector >> 16 != 0) return $"{where}: reserved selector bytes";
                    if (selector >= (ulong)queues) return $"{where}: no such queue";
                    if (type == 0x104)
                    {
                        vqCfg.Add(selector);
                        if (length != 32 || BinaryPrimitives.ReadUInt16LittleEndian(v[6..]) != 0) return $"{where}: not a 32-byte vq_cfg with reserved 0";
                    }
                    else
                    {
                        vqNotify.Add(selector);
                        if (length != 8 || v[4..8].ContainsAnyExcept((byte)0)) return $"{where}: not an 8-byte vq_notify_data with reserved 0";
                    }
                    break;
                case 0x200: // net CVQ: {u8 class; u8 command; u8 reserved[6]}, the command's data
                    if (selector >> 16 != 0) return $"{where}: reserved selector bytes";
                    bool allowed = ((byte)selector, (byte)(selector >> 8)) switch
                    {
                        (0, <= 5) or (1, <= 1) or (2, 0) or (3, 0) or (4, <= 2) => true,
                        _ => false,
                    };
                    if (!allowed) return $"{where}: not a control command 1.4 allows as a part";
                    break;
            }
            if (flags != 0 && type != 0x100 && type < 0x200) return $"{where}: OPTIONAL on a common part that is not DEV_FEATURES";
            lastRank = rank;
            at += 16 + (int)length;
        }
        if (statuses != 1) return $"{statuses} DEVICE_STATUS parts";
        if (vqCfg.Count != queues || vqNotify.Count != queues) return "not one VQ_CFG and one VQ_NOTIFY_CFG per queue";
        return null;
    }

    [Fact]
    public void Every_stream_the_device_writes_follows_the_record_format_the_parts_rules_and_the_order_of_the_spec()
    {
        RandomMemberStates.Run(3000, (rng, _) =>
        {
            var (shape, state) = Case(rng);
            var stream = Encode(state);
            Assert.Null(SpecViolation(stream, shape.QueueCount));
            Assert.True(stream.Length <= DevicePartsWriter.MaxLength(shape), $"{stream.Length} bytes, more than the size reported ({DevicePartsWriter.MaxLength(shape)})");
        });
    }

    [Fact]
    public void Random_states_read_back_from_their_parts_unchanged()
    {
        RandomMemberStates.Run(3000, (rng, _) =>
        {
            var (shape, state) = Case(rng);
            Assert.Null(Read(Encode(state), shape, out var back));
            Assert.Equal(state, back);
        });
    }

    // ---- every mutation of a valid stream ----

    [Fact]
    public void Every_truncation_point_of_a_stream_is_refused()
    {
        RandomMemberStates.Run(200, (rng, _) =>
        {
            var (shape, state) = Case(rng);
            var stream = Encode(state);
            for (int cut = 0; cut < stream.Length; cut++)
            {
                var kind = Refusal(stream[..cut], shape);
                Assert.True(kind is DeviceStateErrorKind.Truncated or DeviceStateErrorKind.Missing, $"cut at {cut} of {stream.Length}: {kind}");
            }
        });
    }

    [Fact]
    public void Every_swap_of_two_records_is_refused_as_out_of_order()
    {
        RandomMemberStates.Run(200, (rng, _) =>
        {
            var (shape, state) = Case(rng);
            var records = Records(Encode(state));
            for (int i = 0; i < records.Count; i++)
                for (int j = i + 1; j < records.Count; j++)
                {
                    var swapped = records.ToList();
                    (swapped[i], swapped[j]) = (swapped[j], swapped[i]);
                    Assert.True(Refusal(Join(swapped), shape) == DeviceStateErrorKind.OutOfOrder, $"records {i} and {j} swapped");
                }
        });
    }

    [Fact]
    public void Every_record_given_twice_is_refused_as_a_duplicate()
    {
        RandomMemberStates.Run(200, (rng, _) =>
        {
            var (shape, state) = Case(rng);
            var records = Records(Encode(state));
            for (int i = 0; i < records.Count; i++)
            {
                var doubled = records.ToList();
                doubled.Insert(i, records[i]);
                Assert.True(Refusal(Join(doubled), shape) == DeviceStateErrorKind.Duplicate, $"record {i} twice");
            }
        });
    }

    /// <summary>DEVICE_STATUS "exactly one", one VQ_CFG and VQ_NOTIFY_CFG per queue; only the OPTIONAL DEV_FEATURES may be absent (and the MAC of a device without one).</summary>
    [Fact]
    public void Removing_any_record_but_the_optional_device_features_or_the_mac_is_refused_as_missing()
    {
        RandomMemberStates.Run(200, (rng, _) =>
        {
            var (shape, state) = Case(rng);
            var records = Records(Encode(state));
            for (int i = 0; i < records.Count; i++)
            {
                var fewer = records.ToList();
                fewer.RemoveAt(i);
                ushort type = BinaryPrimitives.ReadUInt16LittleEndian(records[i]);
                ulong selector = BinaryPrimitives.ReadUInt64LittleEndian(records[i].AsSpan(4));
                if (type == DevicePartType.DevFeatures)
                {
                    Assert.Null(Read(Join(fewer), shape, out var back)); // verified against the device's own features instead
                    Assert.Equal(state, back);
                }
                else if (type == DevicePartType.NetCvqCfg && selector == DevicePartHeader.ControlSelector(1, 1))
                {
                    Assert.Null(Read(Join(fewer), shape, out var back)); // a member without a MAC; applying it to one with a MAC is refused
                    Assert.Equal(state with { Mac = null }, back);
                }
                else
                {
                    Assert.True(Refusal(Join(fewer), shape) == DeviceStateErrorKind.Missing, $"record {i} (0x{type:x}) removed");
                }
            }
        });
    }

    [Fact]
    public void A_stream_from_a_device_with_another_queue_count_is_refused_as_a_shape_mismatch()
    {
        RandomMemberStates.Run(1000, (rng, _) =>
        {
            var (shape, state) = Case(rng);
            var stream = Encode(state);
            // One pair more or fewer, or the same pairs with or without a control queue.
            var others = new List<NetMemberShape>
            {
                shape with { QueueCount = shape.QueueCount + 2, QueuePairs = shape.QueuePairs + 1 },
                shape with { QueueCount = shape.QueueCount % 2 == 0 ? shape.QueueCount + 1 : shape.QueueCount - 1 },
            };
            if (shape.QueuePairs > 1)
                others.Add(shape with { QueueCount = shape.QueueCount - 2, QueuePairs = shape.QueuePairs - 1 });
            foreach (var other in others)
                Assert.True(Refusal(stream, other) == DeviceStateErrorKind.ShapeMismatch, $"{shape.QueueCount} queues read by a device of {other.QueueCount}");
        });
    }

    // ---- single rules of §6.1 and §6.2 ----

    private static readonly NetMemberShape Small = new(0x1_2001_8028, QueueCount: 3, QueuePairs: 1, MaxQueueSize: 256, MaxMsixVectors: 64);

    private static readonly NetMemberState SmallState = new()
    {
        DeviceFeatures = Small.DeviceFeatures,
        DriverFeatures = 0x1_0001_8020,
        ConfigVector = 0,
        Status = 0x0f,
        Queues = [new(256, 1, true, 0x10000, 0x11000, 0x12000), new(256, 2, true, 0x20000, 0x21000, 0x22000), new(64, 3, true, 0x30000, 0x31000, 0x32000)],
        Mac = Devices.Switch.Mac.Parse("02:56:56:00:00:01"),
        MsixVectors = 4,
    };

    /// <summary>The records of <see cref="SmallState"/> with the one of <paramref name="type"/> and <paramref name="selector"/> changed.</summary>
    private static byte[] WithRecord(ushort type, ulong selector, Func<byte[], byte[]> change)
    {
        var records = Records(Encode(SmallState));
        int i = records.FindIndex(r => BinaryPrimitives.ReadUInt16LittleEndian(r) == type && BinaryPrimitives.ReadUInt64LittleEndian(r.AsSpan(4)) == selector);
        Assert.True(i >= 0);
        records[i] = change(records[i].ToArray());
        return Join(records);
    }

    [Theory]
    [InlineData((ushort)0x102, 16UL, 4, DeviceStateErrorKind.BadHeader)]  // PCI_COMMON_CFG offset: reserved le32 after it
    [InlineData((ushort)0x104, 1UL, 2, DeviceStateErrorKind.BadHeader)]   // VQ_CFG index: reserved[6] after it
    [InlineData((ushort)0x105, 1UL, 7, DeviceStateErrorKind.BadHeader)]   // VQ_NOTIFY_CFG index
    [InlineData((ushort)0x200, 0x0100UL, 2, DeviceStateErrorKind.BadHeader)] // CVQ {class; command}: reserved[6]
    [InlineData((ushort)0x101, 0UL, 0, DeviceStateErrorKind.BadHeader)]   // DRV_FEATURES has no selector
    public void Unused_selector_bytes_must_be_zero(ushort type, ulong selector, int selectorByte, DeviceStateErrorKind kind)
    {
        var stream = WithRecord(type, selector, r => { r[4 + selectorByte] ^= 0x01; return r; });
        Assert.Equal(kind, Refusal(stream, Small));
    }

    [Theory]
    [InlineData((ushort)0x100, 0UL, 16)] // le64 feature_bits[] of two words: this device's length is one
    [InlineData((ushort)0x101, 0UL, 16)]
    [InlineData((ushort)0x102, 18UL, 4)] // num_queues is a le16
    [InlineData((ushort)0x104, 0UL, 24)] // vq_cfg is 32 bytes
    [InlineData((ushort)0x105, 0UL, 16)] // vq_notify_data is 8 bytes
    [InlineData((ushort)0x103, 0UL, 0)]
    public void A_part_whose_length_is_not_the_devices_is_refused(ushort type, ulong selector, int length)
    {
        var stream = WithRecord(type, selector, r =>
        {
            var longer = new byte[16 + length];
            r.AsSpan(0, Math.Min(r.Length, longer.Length)).CopyTo(longer);
            BinaryPrimitives.WriteUInt32LittleEndian(longer.AsSpan(12), (uint)length);
            return longer;
        });
        Assert.Equal(DeviceStateErrorKind.WrongLength, Refusal(stream, Small));
    }

    [Fact]
    public void Num_queues_is_verified_against_the_device_and_never_set()
    {
        var stream = WithRecord(DevicePartType.PciCommonCfg, DeviceParts.CommonNumQueues, r => { r[16] = 5; return r; });
        Assert.Equal(DeviceStateErrorKind.ShapeMismatch, Refusal(stream, Small));
    }

    [Fact]
    public void Device_features_are_verified_against_the_device_and_never_set()
    {
        var stream = WithRecord(DevicePartType.DevFeatures, 0, r => { r[16] ^= 0x80; return r; });
        Assert.Equal(DeviceStateErrorKind.FeatureMismatch, Refusal(stream, Small));
        Assert.Equal(DeviceStateErrorKind.FeatureMismatch, Refusal(Encode(SmallState), Small with { DeviceFeatures = Small.DeviceFeatures | 1 }));
    }

    [Theory]
    [InlineData(4, 2)] // le16 enabled is 0 or 1
    [InlineData(6, 1)] // le16 reserved
    [InlineData(7, 1)]
    public void A_queue_configuration_with_undefined_values_is_refused(int valueByte, byte value)
    {
        var stream = WithRecord(DevicePartType.VqCfg, 2, r => { r[16 + valueByte] = value; return r; });
        Assert.Equal(DeviceStateErrorKind.InvalidValue, Refusal(stream, Small));
    }

    [Theory]
    [InlineData(0)] // queue_notify_off
    [InlineData(2)] // queue_notif_config_data
    [InlineData(5)] // reserved
    public void The_notify_configuration_is_verified_against_the_devices(int valueByte)
    {
        var stream = WithRecord(DevicePartType.VqNotifyCfg, 1, r => { r[16 + valueByte] ^= 0x04; return r; });
        Assert.Equal(DeviceStateErrorKind.InvalidValue, Refusal(stream, Small));
    }

    /// <summary>Control-queue selectors: 1.4 allows RX 0–5, MAC 0–1, VLAN 0, ANNOUNCE 0 and MQ 0–2; this device carries RX, MAC and MQ VQ_PAIRS_SET.</summary>
    [Theory]
    [InlineData(0, 6)]  // RX has no command 6
    [InlineData(1, 2)]  // MAC has no command 2
    [InlineData(2, 0)]  // VLAN ADD: allowed by 1.4, not carried (no VLAN filter)
    [InlineData(3, 0)]  // ANNOUNCE ACK: allowed by 1.4, not carried (nothing pending survives a stop)
    [InlineData(4, 1)]  // MQ RSS_CONFIG: allowed by 1.4, not carried (no RSS)
    [InlineData(5, 0)]  // GUEST_OFFLOADS: not in 1.4's list
    [InlineData(6, 0)]  // NOTF_COAL: not in 1.4's list
    public void A_control_queue_part_this_device_does_not_carry_is_refused(byte cls, byte command)
    {
        var records = Records(Encode(SmallState));
        var part = new byte[16 + 1];
        new DevicePartHeader(DevicePartType.NetCvqCfg, 0, DevicePartHeader.ControlSelector(cls, command), 1).Write(part);
        int at = records.FindLastIndex(r => BinaryPrimitives.ReadUInt16LittleEndian(r) == DevicePartType.NetCvqCfg);
        records.Insert(at + 1, part);
        Assert.Equal(DeviceStateErrorKind.UnknownPart, Refusal(Join(records), Small));
    }

    [Theory]
    [InlineData(0, 0, new byte[] { 2 })]                    // RX PROMISC: u8 0 or 1
    [InlineData(1, 1, new byte[] { 1, 0, 0, 0, 0, 1 })]     // MAC_ADDR_SET: a multicast MAC
    [InlineData(1, 1, new byte[] { 0, 0, 0, 0, 0, 0 })]     // MAC_ADDR_SET: zero
    [InlineData(1, 0, new byte[] { 1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0 })] // MAC_TABLE_SET: entries do not fill the value
    public void A_control_queue_value_the_command_would_refuse_is_refused(byte cls, byte command, byte[] value)
    {
        var stream = WithRecord(DevicePartType.NetCvqCfg, DevicePartHeader.ControlSelector(cls, command), r =>
        {
            var part = new byte[16 + value.Length];
            r.AsSpan(0, 16).CopyTo(part);
            BinaryPrimitives.WriteUInt32LittleEndian(part.AsSpan(12), (uint)value.Length);
            value.CopyTo(part, 16);
            return part;
        });
        var kind = Refusal(stream, Small);
        Assert.True(kind is DeviceStateErrorKind.InvalidValue or DeviceStateErrorKind.WrongLength, kind.ToString());
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Queue_pairs_in_use_must_be_between_one_and_the_devices_pairs(ushort pairs)
    {
        var stream = WithRecord(DevicePartType.NetCvqCfg, DevicePartHeader.ControlSelector(4, 0), r => { BinaryPrimitives.WriteUInt16LittleEndian(r.AsSpan(16), pairs); return r; });
        Assert.Equal(DeviceStateErrorKind.ShapeMismatch, Refusal(stream, Small));
    }

    [Theory]
    [InlineData((ushort)0x0000)] // common range, not defined
    [InlineData((ushort)0x0106)] // common range after VQ_NOTIFY_CFG, not defined
    [InlineData((ushort)0x0600)] // reserved range
    [InlineData((ushort)0xffff)]
    public void A_part_type_in_a_reserved_or_undefined_range_is_refused(ushort type)
    {
        var records = Records(Encode(SmallState));
        var part = new byte[16 + 1];
        new DevicePartHeader(type, 0, 0, 1).Write(part);
        records.Add(part);
        Assert.Equal(DeviceStateErrorKind.UnknownPart, Refusal(Join(records), Small));
    }

    [Fact]
    public void Optional_is_set_exactly_on_device_features_and_the_counters_and_required_of_them()
    {
        var records = Records(Encode(SmallState));
        foreach (var r in records)
        {
            ushort type = BinaryPrimitives.ReadUInt16LittleEndian(r);
            Assert.Equal(type is DevicePartType.DevFeatures or DevicePartType.NetCounters ? DeviceParts.FlagOptional : 0, r[2]);
            var flipped = records.Select(x => x == r ? FlipOptional(x) : x);
            Assert.Equal(DeviceStateErrorKind.BadHeader, Refusal(Join(flipped), Small));
        }

        static byte[] FlipOptional(byte[] r)
        {
            var copy = r.ToArray();
            copy[2] ^= DeviceParts.FlagOptional;
            return copy;
        }
    }

    [Fact]
    public void The_checker_of_the_spec_rules_catches_what_it_is_meant_to()
    {
        // The checker above proves the writer right only if it can see the writer wrong.
        var good = Encode(SmallState);
        Assert.Null(SpecViolation(good, 3));
        var records = Records(good);
        Assert.NotNull(SpecViolation(Join(records.Skip(1).Prepend(records[1])), 3));       // DRV_FEATURES twice
        (records[3], records[4]) = (records[4], records[3]);
        Assert.NotNull(SpecViolation(Join(records), 3));                                     // DEVICE_STATUS before a PCI_COMMON_CFG part
        Assert.NotNull(SpecViolation(good, 4));                                              // num_queues and VQ parts for another queue count
        var padded = good.ToList();
        padded.InsertRange(24, new byte[8]);                                                 // padding after DEV_FEATURES
        Assert.NotNull(SpecViolation([.. padded], 3));
        var noOptional = good.ToArray();
        noOptional[2] = 0;
        Assert.NotNull(SpecViolation(noOptional, 3));
    }
}
