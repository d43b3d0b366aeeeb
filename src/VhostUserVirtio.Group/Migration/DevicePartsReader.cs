using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Immutable;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Group.Migration;

/// <summary>
/// Decodes a device parts stream into a <see cref="NetMemberState"/> for a device of a given shape.
/// The stream comes from another device instance, perhaps another version, through a driver we do
/// not trust: every header, selector, length, order and value is checked, and the first problem
/// refuses the whole stream with a typed <see cref="DeviceStateError"/>. Reading is pure: nothing
/// changes anywhere until a complete, valid state exists.
/// </summary>
public static class DevicePartsReader
{
    // Rank of each part type in the mandated order (virtio-admin.md §6.3; device-type parts after the
    // common ones, by type). Part keys are rank << 48 | selector key and must strictly increase.
    private static int Rank(ushort type) => type switch
    {
        DevicePartType.DevFeatures => 0,
        DevicePartType.DrvFeatures => 1,
        DevicePartType.PciCommonCfg => 2,
        DevicePartType.DeviceStatus => 3,
        DevicePartType.VqCfg => 4,
        DevicePartType.VqNotifyCfg => 5,
        DevicePartType.NetCvqCfg => 6,
        DevicePartType.NetLink => 7,
        DevicePartType.NetTrust => 8,
        DevicePartType.NetMsixVectors => 9,
        DevicePartType.NetCounters => 10,
        _ => -1,
    };

    private static ulong Key(ushort type, ulong selectorKey) => ((ulong)Rank(type) << 48) | selectorKey;

    /// <summary>The largest value any part may have (a full MAC table), so values are read into one stack buffer.</summary>
    private const int MaxValueLength = 8 + 6 * 2 * DevicePartsWriter.MaxTableEntries;

    /// <summary>Reads a stream; returns why it is refused, or null with the state in <paramref name="state"/>.</summary>
    public static DeviceStateError? TryRead(in ReadOnlySequence<byte> stream, NetMemberShape shape, out NetMemberState? state)
    {
        state = null;
        var reader = new SequenceReader<byte>(stream);
        var seen = new HashSet<ulong>();
        ulong previous = 0;
        bool any = false;
        var b = new Builder(shape);
        Span<byte> header = stackalloc byte[DeviceParts.HeaderSize];
        Span<byte> value = stackalloc byte[MaxValueLength];

        while (!reader.End)
        {
            long at = reader.Consumed;
            if (!reader.TryCopyTo(header))
                return Fail(DeviceStateErrorKind.Truncated, $"{reader.Remaining} byte(s) at offset {at} are not a whole part header");
            reader.Advance(DeviceParts.HeaderSize);
            var h = DevicePartHeader.Read(header, out byte reserved);
            if (Describe(h, shape, out ulong selectorKey, out byte flags, out int minLength, out int maxLength) is { } refused)
                return Fail(refused.Kind, $"part at offset {at}: {h}: {refused.Detail}");
            if (reserved != 0 || h.Flags != flags)
                return Fail(DeviceStateErrorKind.BadHeader, $"part at offset {at}: {h}: flags must be 0x{flags:x} and reserved 0 (reserved is 0x{reserved:x})");
            ulong key = Key(h.Type, selectorKey);
            if (!seen.Add(key))
                return Fail(DeviceStateErrorKind.Duplicate, $"part at offset {at}: {h} appears twice");
            if (any && key < previous)
                return Fail(DeviceStateErrorKind.OutOfOrder, $"part at offset {at}: {h} comes after a part the mandated order puts after it");
            if (h.Length < minLength || h.Length > maxLength)
                return Fail(DeviceStateErrorKind.WrongLength, $"part at offset {at}: {h}: this device's length is {(minLength == maxLength ? minLength.ToString() : $"{minLength}..{maxLength}")}");
            if (reader.Remaining < h.Length)
                return Fail(DeviceStateErrorKind.Truncated, $"part at offset {at}: {h}: only {reader.Remaining} byte(s) of its value follow");
            var v = value[..(int)h.Length];
            reader.TryCopyTo(v);
            reader.Advance(h.Length);
            if (b.Take(h, selectorKey, v, shape) is { } bad)
                return Fail(bad.Kind, $"part at offset {at}: {h}: {bad.Detail}");
            if (b.FeatureMismatch is { } differ && key >= Key(DevicePartType.PciCommonCfg, DeviceParts.CommonNumQueues))
                return differ;
            previous = key;
            any = true;
        }

        if (b.FeatureMismatch is { } features)
            return features;
        if (Missing(seen, shape) is { } missing)
            return Fail(DeviceStateErrorKind.Missing, $"the stream has no {missing} part");
        if (b.CheckVectors() is { } vectors)
            return vectors;
        state = b.Build();
        return null;
    }

    private static DeviceStateError Fail(DeviceStateErrorKind kind, string detail) => new(kind, detail);

    /// <summary>What this device allows for a header: the selector's key, the flags, and the value's length range.</summary>
    private static DeviceStateError? Describe(DevicePartHeader h, NetMemberShape shape, out ulong selectorKey, out byte flags, out int minLength, out int maxLength)
    {
        selectorKey = 0;
        flags = 0;
        minLength = maxLength = 0;
        switch (h.Type)
        {
            case DevicePartType.DevFeatures or DevicePartType.DrvFeatures or DevicePartType.NetMsixVectors:
                flags = h.Type == DevicePartType.DevFeatures ? DeviceParts.FlagOptional : (byte)0;
                minLength = maxLength = 8;
                return NoSelector(h);
            case DevicePartType.DeviceStatus or DevicePartType.NetLink or DevicePartType.NetTrust:
                minLength = maxLength = 1;
                return NoSelector(h);
            case DevicePartType.NetCounters:
                flags = DeviceParts.FlagOptional;
                minLength = maxLength = MemberCounters.PartLength;
                return NoSelector(h);
            case DevicePartType.PciCommonCfg:
                if (h.Selector is not (DeviceParts.CommonConfigMsixVector or DeviceParts.CommonNumQueues))
                    return new(DeviceStateErrorKind.BadHeader, "only offsets 16 (config_msix_vector) and 18 (num_queues) are carried");
                selectorKey = h.Selector;
                minLength = maxLength = 2;
                return null;
            case DevicePartType.VqCfg or DevicePartType.VqNotifyCfg:
                if (h.Selector > ushort.MaxValue)
                    return new(DeviceStateErrorKind.BadHeader, "reserved selector bytes are not zero");
                if (h.Selector >= (ulong)shape.QueueCount)
                    return new(DeviceStateErrorKind.ShapeMismatch, $"queue {h.Selector} does not exist (the device has {shape.QueueCount})");
                selectorKey = h.Selector;
                minLength = maxLength = h.Type == DevicePartType.VqCfg ? DeviceParts.VqCfgSize : DeviceParts.VqNotifySize;
                return null;
            case DevicePartType.NetCvqCfg:
                if (h.Selector > ushort.MaxValue)
                    return new(DeviceStateErrorKind.BadHeader, "reserved selector bytes are not zero");
                byte cls = (byte)h.Selector, command = (byte)(h.Selector >> 8);
                selectorKey = (ulong)cls << 8 | command;
                (minLength, maxLength) = (cls, command) switch
                {
                    (VirtioNet.CtrlRx, < ReceiveModes.Count) => (1, 1),
                    (VirtioNet.CtrlMac, VirtioNet.CtrlMacTableSet) => (8, MaxValueLength),
                    (VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet) => (6, 6),
                    (VirtioNet.CtrlMq, VirtioNet.CtrlMqVqPairsSet) => (2, 2),
                    _ => (-1, -1),
                };
                return minLength < 0 ? new(DeviceStateErrorKind.UnknownPart, $"control command {cls}.{command} is not carried by this device") : null;
            default:
                return new(DeviceStateErrorKind.UnknownPart, "this device has no such part");
        }
    }

    private static DeviceStateError? NoSelector(DevicePartHeader h) =>
        h.Selector == 0 ? null : new(DeviceStateErrorKind.BadHeader, "the part has no selector; its bytes must be zero");

    /// <summary>The first required part the stream lacked (DEV_FEATURES and the MAC are optional).</summary>
    private static string? Missing(HashSet<ulong> seen, NetMemberShape shape)
    {
        if (!seen.Contains(Key(DevicePartType.DrvFeatures, 0))) return "DRV_FEATURES";
        if (!seen.Contains(Key(DevicePartType.PciCommonCfg, DeviceParts.CommonConfigMsixVector))) return "PCI_COMMON_CFG config_msix_vector";
        if (!seen.Contains(Key(DevicePartType.PciCommonCfg, DeviceParts.CommonNumQueues))) return "PCI_COMMON_CFG num_queues";
        if (!seen.Contains(Key(DevicePartType.DeviceStatus, 0))) return "DEVICE_STATUS";
        for (int i = 0; i < shape.QueueCount; i++)
        {
            if (!seen.Contains(Key(DevicePartType.VqCfg, (ulong)i))) return $"VQ_CFG of queue {i}";
            if (!seen.Contains(Key(DevicePartType.VqNotifyCfg, (ulong)i))) return $"VQ_NOTIFY_CFG of queue {i}";
        }
        for (int c = 0; c < ReceiveModes.Count; c++)
            if (!seen.Contains(Key(DevicePartType.NetCvqCfg, (ulong)(VirtioNet.CtrlRx << 8 | c)))) return $"NET_CVQ_CFG RX command {c}";
        if (!seen.Contains(Key(DevicePartType.NetCvqCfg, VirtioNet.CtrlMac << 8 | VirtioNet.CtrlMacTableSet))) return "NET_CVQ_CFG MAC_TABLE_SET";
        if (!seen.Contains(Key(DevicePartType.NetCvqCfg, VirtioNet.CtrlMq << 8 | VirtioNet.CtrlMqVqPairsSet))) return "NET_CVQ_CFG MQ_VQ_PAIRS_SET";
        if (!seen.Contains(Key(DevicePartType.NetLink, 0))) return "NET_LINK";
        if (!seen.Contains(Key(DevicePartType.NetTrust, 0))) return "NET_TRUST";
        if (!seen.Contains(Key(DevicePartType.NetMsixVectors, 0))) return "NET_MSIX_VECTORS";
        if (!seen.Contains(Key(DevicePartType.NetCounters, 0))) return "NET_COUNTERS";
        return null;
    }

    /// <summary>Collects checked values; builds the state once the whole stream has been read.</summary>
    private sealed class Builder(NetMemberShape shape)
    {
        // DEV_FEATURES is optional: absent, the device's own features are the ones verified.
        private ulong _deviceFeatures = shape.DeviceFeatures;
        private ulong _driverFeatures;
        private ushort _configVector = DeviceParts.NoVector;
        private byte _status;
        private readonly VirtqueueState[] _queues = new VirtqueueState[shape.QueueCount];
        private Mac? _mac;
        private ImmutableArray<Mac> _unicast = [], _multicast = [];
        private ReceiveModes _modes = ReceiveModes.Initial;
        private ushort _pairs = 1, _msix;
        private bool _link, _trusted;
        private MemberCounters _counters = MemberCounters.Zero;

        /// <summary>
        /// Features that are not this device's, reported once the stream is past num_queues (the part
        /// after them in the order): a device of another queue count also offers other features (MQ,
        /// CTRL_VQ), and the queue count is the reason an operator can act on.
        /// </summary>
        public DeviceStateError? FeatureMismatch { get; private set; }

        public DeviceStateError? Take(DevicePartHeader h, ulong selectorKey, ReadOnlySpan<byte> v, NetMemberShape shape)
        {
            switch (h.Type)
            {
                case DevicePartType.DevFeatures:
                    _deviceFeatures = BinaryPrimitives.ReadUInt64LittleEndian(v);
                    if (_deviceFeatures != shape.DeviceFeatures)
                        FeatureMismatch ??= new(DeviceStateErrorKind.FeatureMismatch, $"device features 0x{_deviceFeatures:x} are not this device's 0x{shape.DeviceFeatures:x}");
                    return null;
                case DevicePartType.DrvFeatures:
                    _driverFeatures = BinaryPrimitives.ReadUInt64LittleEndian(v);
                    if ((_driverFeatures & ~shape.DeviceFeatures) != 0)
                        FeatureMismatch ??= new(DeviceStateErrorKind.FeatureMismatch, $"driver features 0x{_driverFeatures:x} include bits this device does not offer (0x{_driverFeatures & ~shape.DeviceFeatures:x})");
                    return null;
                case DevicePartType.PciCommonCfg when selectorKey == DeviceParts.CommonConfigMsixVector:
                    _configVector = BinaryPrimitives.ReadUInt16LittleEndian(v);
                    return null;
                case DevicePartType.PciCommonCfg:
                    ushort numQueues = BinaryPrimitives.ReadUInt16LittleEndian(v);
                    return numQueues == shape.QueueCount ? null
                        : new(DeviceStateErrorKind.ShapeMismatch, $"the state has {numQueues} queues, this device {shape.QueueCount}");
                case DevicePartType.DeviceStatus:
                    _status = v[0];
                    return (_status & 0x30) == 0 ? null : new(DeviceStateErrorKind.InvalidValue, $"status 0x{_status:x} has undefined bits set");
                case DevicePartType.VqCfg:
                    return TakeQueue((int)selectorKey, v, shape);
                case DevicePartType.VqNotifyCfg:
                    Span<byte> expected = stackalloc byte[DeviceParts.VqNotifySize];
                    DevicePartsWriter.WriteNotify(expected, (ushort)selectorKey);
                    return v.SequenceEqual(expected) ? null
                        : new(DeviceStateErrorKind.InvalidValue, "notify configuration differs from this device's (notify_off and config data = queue index)");
                case DevicePartType.NetCvqCfg:
                    return TakeControl((byte)(selectorKey >> 8), (byte)selectorKey, v, shape);
                case DevicePartType.NetLink:
                    return Flag(v, out _link);
                case DevicePartType.NetTrust:
                    return Flag(v, out _trusted);
                case DevicePartType.NetMsixVectors:
                    ulong msix = BinaryPrimitives.ReadUInt64LittleEndian(v);
                    if (msix > (ulong)shape.MaxMsixVectors)
                        return new(DeviceStateErrorKind.InvalidValue, $"{msix} MSI-X vectors exceed the {shape.MaxMsixVectors} a member may have");
                    _msix = (ushort)msix;
                    return null;
                default: // NetCounters
                    return TakeCounters(v);
            }
        }

        private DeviceStateError? TakeQueue(int index, ReadOnlySpan<byte> v, NetMemberShape shape)
        {
            ushort size = BinaryPrimitives.ReadUInt16LittleEndian(v);
            ushort vector = BinaryPrimitives.ReadUInt16LittleEndian(v[2..]);
            ushort enabled = BinaryPrimitives.ReadUInt16LittleEndian(v[4..]);
            ushort reserved = BinaryPrimitives.ReadUInt16LittleEndian(v[6..]);
            ulong desc = BinaryPrimitives.ReadUInt64LittleEndian(v[8..]);
            ulong driver = BinaryPrimitives.ReadUInt64LittleEndian(v[16..]);
            ulong device = BinaryPrimitives.ReadUInt64LittleEndian(v[24..]);
            if (reserved != 0 || enabled > 1)
                return new(DeviceStateErrorKind.InvalidValue, $"queue {index}: enabled {enabled} is not 0 or 1, or reserved ({reserved}) is not 0");
            if (size != 0 && (!SplitRing.IsValidSize(size) || size > shape.MaxQueueSize))
                return new(DeviceStateErrorKind.InvalidValue, $"queue {index}: size {size} is not a power of two up to {shape.MaxQueueSize}");
            if (size == 0 && (enabled != 0 || desc != 0 || driver != 0 || device != 0))
                return new(DeviceStateErrorKind.InvalidValue, $"queue {index}: a queue without a size can be neither enabled nor placed");
            if (desc % SplitRing.DescriptorAlignment != 0 || driver % SplitRing.AvailableAlignment != 0 || device % SplitRing.UsedAlignment != 0)
                return new(DeviceStateErrorKind.InvalidValue, $"queue {index}: ring addresses 0x{desc:x}/0x{driver:x}/0x{device:x} are misaligned");
            _queues[index] = new VirtqueueState(size, vector, enabled == 1, desc, driver, device);
            return null;
        }

        private DeviceStateError? TakeControl(byte cls, byte command, ReadOnlySpan<byte> v, NetMemberShape shape)
        {
            switch (cls)
            {
                case VirtioNet.CtrlRx:
                    var refused = Flag(v, out bool on);
                    _modes = _modes.With(command, on);
                    return refused;
                case VirtioNet.CtrlMac when command == VirtioNet.CtrlMacAddrSet:
                    var mac = Mac.Read(v);
                    if (mac.IsMulticast || mac.IsZero)
                        return new(DeviceStateErrorKind.InvalidValue, $"MAC {mac} is multicast or zero");
                    _mac = mac;
                    return null;
                case VirtioNet.CtrlMac:
                    if (!ReadTable(ref v, out _unicast) || !ReadTable(ref v, out _multicast) || !v.IsEmpty)
                        return new(DeviceStateErrorKind.InvalidValue, $"MAC tables are not two tables of at most {DevicePartsWriter.MaxTableEntries} entries filling the value");
                    return null;
                default: // MQ VQ_PAIRS_SET
                    _pairs = BinaryPrimitives.ReadUInt16LittleEndian(v);
                    return _pairs >= 1 && _pairs <= shape.QueuePairs ? null
                        : new(DeviceStateErrorKind.ShapeMismatch, $"{_pairs} queue pairs in use, this device has {shape.QueuePairs}");
            }
        }

        private static bool ReadTable(ref ReadOnlySpan<byte> v, out ImmutableArray<Mac> macs)
        {
            macs = [];
            if (v.Length < 4)
                return false;
            uint n = BinaryPrimitives.ReadUInt32LittleEndian(v);
            if (n > DevicePartsWriter.MaxTableEntries || (uint)(v.Length - 4) < n * 6)
                return false;
            var builder = ImmutableArray.CreateBuilder<Mac>((int)n);
            for (int i = 0; i < n; i++)
                builder.Add(Mac.Read(v[(4 + 6 * i)..]));
            macs = builder.MoveToImmutable();
            v = v[(int)(4 + 6 * n)..];
            return true;
        }

        private DeviceStateError? TakeCounters(ReadOnlySpan<byte> v)
        {
            var all = new long[5 + MemberCounters.DropReasons];
            for (int i = 0; i < all.Length; i++)
            {
                all[i] = BinaryPrimitives.ReadInt64LittleEndian(v[(8 * i)..]);
                if (all[i] < 0)
                    return new(DeviceStateErrorKind.InvalidValue, $"counter {i} is beyond 2^63");
            }
            _counters = new MemberCounters(all[0], all[1], all[2], all[3], all[4], ImmutableArray.Create(all, 5, MemberCounters.DropReasons));
            return null;
        }

        private static DeviceStateError? Flag(ReadOnlySpan<byte> v, out bool on)
        {
            on = v[0] == 1;
            return v[0] <= 1 ? null : new(DeviceStateErrorKind.InvalidValue, $"flag value {v[0]} is neither 0 nor 1");
        }

        /// <summary>Every vector the state programs must lie in the member's MSI-X table (or be NO_VECTOR).</summary>
        public DeviceStateError? CheckVectors()
        {
            if (_configVector != DeviceParts.NoVector && _configVector >= _msix)
                return new(DeviceStateErrorKind.InvalidValue, $"config vector {_configVector} is outside the member's {_msix} MSI-X vectors");
            for (int i = 0; i < _queues.Length; i++)
                if (_queues[i].Vector != DeviceParts.NoVector && _queues[i].Vector >= _msix)
                    return new(DeviceStateErrorKind.InvalidValue, $"queue {i} vector {_queues[i].Vector} is outside the member's {_msix} MSI-X vectors");
            return null;
        }

        public NetMemberState Build() => new()
        {
            DeviceFeatures = _deviceFeatures,
            DriverFeatures = _driverFeatures,
            ConfigVector = _configVector,
            Status = _status,
            Queues = ImmutableArray.Create(_queues),
            Mac = _mac,
            UnicastTable = _unicast,
            MulticastTable = _multicast,
            Modes = _modes,
            ActivePairs = _pairs,
            LinkUp = _link,
            Trusted = _trusted,
            MsixVectors = _msix,
            Counters = _counters,
        };
    }
}
