using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Group.Transport;

/// <summary>What a managed device's transport needs of its owner: its memory, and its transport queue's interrupt.</summary>
internal interface IManagedDeviceHost
{
    /// <summary>The owner's memory as the group's worker sees it (<see cref="VhostUserBackend.WorkerMemory"/>).</summary>
    GuestMemory OwnerMemory { get; }
    DirtyLog? OwnerLog { get; }

    /// <summary>Signals the transport queue's call descriptor: "an MSI was written" (the owner driver's interrupt).</summary>
    void SignalTransportQueue();

    /// <summary>Whether [address, address+length) overlaps the DMA window of a managed device other than <paramref name="self"/>.</summary>
    bool InOtherWindow(ManagedDevice self, ulong address, ulong length);
}

/// <summary>
/// A managed device as the transport queue drives it (path 1, docs/owner-binding.md): features,
/// status, config, queues placed in the device's DMA window of the owner's memory, MSI vectors of its
/// own (a 32-bit write of the vector's data at its address in the owner's memory, then the transport
/// queue's interrupt; masked vectors set pending). Rings start through <see cref="OwnerDrivenMember"/>,
/// the one owner-driven ring collaborator. Everything runs on the group's worker.
/// </summary>
internal sealed class ManagedTransport
{
    private const byte Acknowledge = 1, Driver = 2, DriverOk = 4, FeaturesOk = 8, DeviceNeedsReset = 0x40, Failed = 0x80;

    private readonly ManagedDevice _device;
    private readonly IManagedDeviceHost _host;
    private readonly ILogger _logger;
    private readonly OwnerDrivenMember _rings;
    private readonly QueueConfig[] _queues;
    private readonly MsiVector[] _msi;
    // Whatever the owner's driver gets wrong repeatedly (rings it misplaces, MSI targets gone) is logged at this rate.
    private readonly LogRateLimit _refusedLog = new();
    private ulong _driverFeatures;
    private byte _status;
    private uint _generation;
    private ushort _configVector = NoVector;

    public const ushort NoVector = 0xFFFF;

    private struct QueueConfig
    {
        public ushort Size, Vector;
        public bool Enabled;
        public ulong Descriptors, Driver, Device;
    }

    private struct MsiVector
    {
        public ulong Address;
        public uint Data;
        public bool Masked, Pending;
    }

    public ManagedTransport(ManagedDevice device, IManagedDeviceHost host, ILogger logger)
    {
        _device = device;
        _host = host;
        _logger = logger;
        _rings = new OwnerDrivenMember(device.Backend, Raise, FrontEndReset, logger, ownDmaSpace: true);
        _queues = new QueueConfig[device.Device.QueueCount];
        for (int i = 0; i < _queues.Length; i++)
            _queues[i].Vector = NoVector;
        _msi = new MsiVector[MaxVectors(device)];
    }

    /// <summary>MSI vectors per managed device: one per queue and one for config changes.</summary>
    public static int MaxVectors(ManagedDevice device) => device.Device.QueueCount + 1;

    public byte Status => _status;

    /// <summary>The device's DMA space: [base, base+length) of the owner's memory (length 0: none yet).</summary>
    public ulong WindowBase { get; private set; }
    public ulong WindowLength { get; private set; }

    /// <summary>The owner's memory or log changed (group worker): the window is cut from the new snapshot, running rings move there.</summary>
    public void OwnerMemoryChanged(GuestMemory memory, DirtyLog? log) =>
        _rings.SetDmaSpace(memory.Window(WindowBase, WindowLength), log);

    /// <summary>Sets the DMA window (only while the device is reset: no ring may be left in the old one).</summary>
    public AdminOutcome SetWindow(ulong start, ulong length)
    {
        if (_status != 0)
            return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        WindowBase = start;
        WindowLength = length;
        OwnerMemoryChanged(_host.OwnerMemory, _host.OwnerLog);
        return AdminOutcome.Ok();
    }

    // ---- class 2: features ----

    public AdminOutcome DevFeaturesGet(Span<byte> result) => Features(result, OfferedFeatures);

    /// <summary>The member's features less packed rings, which owner-driven rings do not support.</summary>
    private ulong OfferedFeatures => _device.Device.Features & ~VirtioFeature.Mask(VirtioFeature.RingPacked);

    public AdminOutcome DrvFeaturesGet(Span<byte> result) => Features(result, _driverFeatures);

    private static AdminOutcome Features(Span<byte> result, ulong features)
    {
        result[..16].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(result, features);
        return AdminOutcome.Ok(16);
    }

    public AdminOutcome DrvFeaturesSet(ReadOnlySpan<byte> data)
    {
        ulong low = BinaryPrimitives.ReadUInt64LittleEndian(data), high = BinaryPrimitives.ReadUInt64LittleEndian(data[8..]);
        if (high != 0 || (low & ~OfferedFeatures) != 0 || (_status & FeaturesOk) != 0)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (Claim() is { } busy)
            return busy;
        _driverFeatures = low;
        return AdminOutcome.Ok();
    }

    // ---- class 3: status ----

    public AdminOutcome StatusGet(Span<byte> result)
    {
        result[..8].Clear();
        result[0] = (byte)(_status | (_rings.Faulted ? DeviceNeedsReset : 0));
        return AdminOutcome.Ok(8);
    }

    public AdminOutcome GenerationGet(Span<byte> result)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(result, _generation);
        return AdminOutcome.Ok(4);
    }

    /// <summary>
    /// STATUS_SET: 0 resets the device and completes only when it is reset (rings stopped, device
    /// back to its defaults). Otherwise bits are only added (a driver never clears one but by reset).
    /// FEATURES_OK is kept clear when the features are unusable (no VERSION_1); DRIVER_OK starts the
    /// enabled queues; FAILED stops them.
    /// </summary>
    public AdminOutcome StatusSet(ReadOnlySpan<byte> data)
    {
        byte wanted = data[0];
        if (wanted == 0)
        {
            Reset();
            return AdminOutcome.Ok();
        }
        if ((wanted & _status) != _status || (wanted & DeviceNeedsReset) != 0)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (Claim() is { } busy)
            return busy;
        byte added = (byte)(wanted & ~_status);
        if ((added & FeaturesOk) != 0)
        {
            if (!VirtioFeature.Has(_driverFeatures, VirtioFeature.Version1))
            {
                _logger.LogLimited(_refusedLog, LogLevel.Information, "{Device}: FEATURES_OK refused: features 0x{Features:x} lack VERSION_1", _device.Name, _driverFeatures);
                wanted = (byte)(wanted & ~FeaturesOk);
                added = (byte)(added & ~FeaturesOk);
            }
            else
            {
                _rings.SetFeatures(_driverFeatures);
            }
        }
        if ((added & DriverOk) != 0 && (wanted & FeaturesOk) == 0)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        _status = wanted;
        if ((added & Failed) != 0)
        {
            for (int i = 0; i < _queues.Length; i++)
                _rings.StopRing(i);
            return AdminOutcome.Ok();
        }
        if ((added & DriverOk) != 0)
        {
            for (int i = 0; i < _queues.Length; i++)
            {
                if (_queues[i].Enabled && Start(i) is { } refused)
                {
                    _logger.LogLimited(_refusedLog, LogLevel.Warning, "{Device}: queue {Queue} cannot start at DRIVER_OK: {Reason}", _device.Name, i, refused);
                    _status |= DeviceNeedsReset;
                }
            }
        }
        return AdminOutcome.Ok();
    }

    /// <summary>Device reset through the transport (STATUS_SET 0, DEV_DESTROY, the owner's reset): everything but the MSI table and window.</summary>
    public void Reset()
    {
        _rings.Release();
        _driverFeatures = 0;
        _status = 0;
        _configVector = NoVector;
        for (int i = 0; i < _queues.Length; i++)
            _queues[i] = new QueueConfig { Vector = NoVector };
    }

    /// <summary>The owner's driver went away: its memory with it. The device is reset and forgets its window and vectors.</summary>
    public void OwnerGone()
    {
        Reset();
        Array.Clear(_msi);
        WindowBase = WindowLength = 0;
        OwnerMemoryChanged(GuestMemory.Empty, null);
    }

    // ---- class 4: config ----

    public AdminOutcome CfgRead(ReadOnlySpan<byte> data, Span<byte> result, int room)
    {
        uint offset = BinaryPrimitives.ReadUInt32LittleEndian(data), length = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
        if ((ulong)offset + length > (ulong)_device.Device.ConfigSize)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (length > room)
            return new AdminOutcome(AdminStatus.Enomem, AdminQualifier.InvalidField);
        _device.Device.ReadConfig((int)offset, result[..(int)length]);
        return AdminOutcome.Ok((int)length);
    }

    public AdminOutcome CfgWrite(ReadOnlySpan<byte> data)
    {
        uint offset = BinaryPrimitives.ReadUInt32LittleEndian(data), length = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
        if ((ulong)offset + length > (ulong)_device.Device.ConfigSize || data.Length - 8 < length)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (!_device.Device.WriteConfig((int)offset, data.Slice(8, (int)length)))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        ConfigChanged();
        return AdminOutcome.Ok();
    }

    /// <summary>The config space changed: a new generation, and the config vector fires.</summary>
    public void ConfigChanged()
    {
        _generation++;
        Fire(_configVector);
    }

    // ---- class 5: queues ----

    private bool ValidQueue(ReadOnlySpan<byte> data, out int index)
    {
        index = BinaryPrimitives.ReadUInt16LittleEndian(data);
        return index < _queues.Length;
    }

    public AdminOutcome VqInfo(ReadOnlySpan<byte> data, Span<byte> result)
    {
        if (!ValidQueue(data, out int index))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        result[..8].Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(result, (ushort)_device.Device.MaxQueueSize);
        BinaryPrimitives.WriteUInt16LittleEndian(result[2..], (ushort)index);   // notify_off: the queue index (NOTIFY carries it)
        BinaryPrimitives.WriteUInt16LittleEndian(result[4..], (ushort)index);   // notif_config_data
        return AdminOutcome.Ok(8);
    }

    /// <summary>VQ_SET {le16 index; le16 size; le16 vector; le16 reserved; le64 desc; le64 driver; le64 device}: EBUSY while enabled.</summary>
    public AdminOutcome VqSet(ReadOnlySpan<byte> data)
    {
        if (!ValidQueue(data, out int index))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        ushort size = BinaryPrimitives.ReadUInt16LittleEndian(data[2..]), vector = BinaryPrimitives.ReadUInt16LittleEndian(data[4..]);
        if (_queues[index].Enabled)
            return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        if (size == 0 || !ushort.IsPow2(size) || size > _device.Device.MaxQueueSize || (vector != NoVector && vector >= _msi.Length))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (Claim() is { } busy)
            return busy;
        _queues[index] = new QueueConfig
        {
            Size = size,
            Vector = vector,
            Descriptors = BinaryPrimitives.ReadUInt64LittleEndian(data[8..]),
            Driver = BinaryPrimitives.ReadUInt64LittleEndian(data[16..]),
            Device = BinaryPrimitives.ReadUInt64LittleEndian(data[24..]),
        };
        return AdminOutcome.Ok();
    }

    /// <summary>VQ_ENABLE {le16 index; le16 enable (1)}: a queue set up in the window; it runs from DRIVER_OK on.</summary>
    public AdminOutcome VqEnable(ReadOnlySpan<byte> data)
    {
        if (!ValidQueue(data, out int index) || BinaryPrimitives.ReadUInt16LittleEndian(data[2..]) != 1)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        var q = _queues[index];
        if (q.Size == 0)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (Claim() is { } busy)
            return busy;
        // Running (DRIVER_OK) it starts now; otherwise it is checked in the window it will start in.
        if (((_status & DriverOk) != 0 ? Start(index) : _rings.CheckPlacement(index, Placement(index))) is { } refused)
        {
            _logger.LogLimited(_refusedLog, LogLevel.Warning, "{Device}: queue {Queue} refused: {Reason}", _device.Name, index, refused);
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        }
        _queues[index].Enabled = true;
        return AdminOutcome.Ok();
    }

    /// <summary>VQ_RESET: with VIRTIO_F_RING_RESET negotiated, one queue stops and forgets its set-up.</summary>
    public AdminOutcome VqReset(ReadOnlySpan<byte> data)
    {
        if (!ValidQueue(data, out int index) || !VirtioFeature.Has(_driverFeatures, VirtioFeature.RingReset))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        _rings.StopRing(index);
        _queues[index] = new QueueConfig { Vector = NoVector };
        return AdminOutcome.Ok();
    }

    /// <summary>VQ_GET → the 32-byte virtio_dev_part_vq_cfg: {le16 size; le16 vector; le16 enabled; le16 reserved; le64 desc; le64 driver; le64 device}.</summary>
    public AdminOutcome VqGet(ReadOnlySpan<byte> data, Span<byte> result)
    {
        if (!ValidQueue(data, out int index))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        var q = _queues[index];
        result[..32].Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(result, q.Size);
        BinaryPrimitives.WriteUInt16LittleEndian(result[2..], q.Vector);
        BinaryPrimitives.WriteUInt16LittleEndian(result[4..], q.Enabled ? (ushort)1 : (ushort)0);
        BinaryPrimitives.WriteUInt64LittleEndian(result[8..], q.Descriptors);
        BinaryPrimitives.WriteUInt64LittleEndian(result[16..], q.Driver);
        BinaryPrimitives.WriteUInt64LittleEndian(result[24..], q.Device);
        return AdminOutcome.Ok(32);
    }

    private RingPlacement Placement(int index) =>
        new(_queues[index].Size, _queues[index].Descriptors, _queues[index].Driver, _queues[index].Device);

    private string? Start(int index) => _rings.StartRing(index, Placement(index));

    // ---- class 6: MSI ----

    /// <summary>
    /// MSI_SET {le16 vector; le16 flags (bit 0 masked); le32 data; le64 address}. The address is in the
    /// owner's memory, 4-byte aligned, and not in another managed device's window (interrupts stay
    /// isolated). Unmasking a pending vector sends it and clears pending (the PCI MSI-X rule).
    /// </summary>
    public AdminOutcome MsiSet(ReadOnlySpan<byte> data)
    {
        ushort vector = BinaryPrimitives.ReadUInt16LittleEndian(data), flags = BinaryPrimitives.ReadUInt16LittleEndian(data[2..]);
        uint msgData = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
        ulong address = BinaryPrimitives.ReadUInt64LittleEndian(data[8..]);
        if (vector >= _msi.Length || (flags & ~1) != 0 || address % 4 != 0 ||
            !_host.OwnerMemory.IsRangeMapped(address, 4) || _host.InOtherWindow(_device, address, 4))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (Claim() is { } busy)
            return busy;
        bool wasPending = _msi[vector].Pending;
        _msi[vector] = new MsiVector { Address = address, Data = msgData, Masked = (flags & 1) != 0, Pending = wasPending };
        if (!_msi[vector].Masked && wasPending)
        {
            _msi[vector].Pending = false;
            Fire(vector);
        }
        return AdminOutcome.Ok();
    }

    /// <summary>CONFIG_VECTOR_SET {le16 vector} → {le16 assigned}: NO_VECTOR when the vector does not exist.</summary>
    public AdminOutcome ConfigVectorSet(ReadOnlySpan<byte> data, Span<byte> result)
    {
        ushort vector = BinaryPrimitives.ReadUInt16LittleEndian(data);
        if (Claim() is { } busy)
            return busy;
        _configVector = vector < _msi.Length ? vector : NoVector;
        result[..8].Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(result, _configVector);
        return AdminOutcome.Ok(8);
    }

    public AdminOutcome MsiGet(ReadOnlySpan<byte> data, Span<byte> result)
    {
        ushort vector = BinaryPrimitives.ReadUInt16LittleEndian(data);
        if (vector >= _msi.Length)
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        var v = _msi[vector];
        result[..16].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(result, v.Address);
        BinaryPrimitives.WriteUInt32LittleEndian(result[8..], v.Data);
        result[12] = (byte)((v.Masked ? 1 : 0) | (v.Pending ? 2 : 0));
        return AdminOutcome.Ok(16);
    }

    /// <summary>Sends MSI <paramref name="vector"/>: pending while masked; otherwise its data written at its address, then the owner's interrupt.</summary>
    private void Fire(ushort vector)
    {
        if (vector >= _msi.Length)
            return;
        ref var v = ref _msi[vector];
        if (v.Masked)
        {
            v.Pending = true;
            return;
        }
        if (v.Address == 0)
            return; // never programmed: nowhere to send it
        Span<byte> message = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(message, v.Data);
        if (!_host.OwnerMemory.Write(v.Address, message))
        {
            _logger.LogLimited(_refusedLog, LogLevel.Warning, "{Device}: MSI vector {Vector} at 0x{Address:x} is outside the owner's memory; not sent",
                _device.Name, vector, v.Address);
            return;
        }
        _host.OwnerLog?.Mark(v.Address, 4);
        _host.SignalTransportQueue();
    }

    private void Raise(DeviceQueue queue) => Fire(_queues[queue.Index].Vector);

    // ---- class 7: notifications ----

    /// <summary>NOTIFY {le16 queue}: the driver made buffers available on a queue the transport runs.</summary>
    public AdminOutcome Notify(ReadOnlySpan<byte> data) =>
        ValidQueue(data, out int index) && _rings.Notify(index) ? AdminOutcome.Ok() : AdminOutcome.Invalid(AdminQualifier.InvalidField);

    /// <summary>The transport takes the device over; refused (EBUSY) while a VMM drives it on its socket.</summary>
    private AdminOutcome? Claim()
    {
        if (_rings.Claim() is { } why)
        {
            _logger.LogDebug("{Device}: transport queue command refused: {Why}", _device.Name, why);
            return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
        }
        return null;
    }

    /// <summary>A VMM's front end reset or left while the transport drove the device: nothing to undo here, its rings are ours.</summary>
    private void FrontEndReset() { }
}
