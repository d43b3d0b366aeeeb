using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Group.Legacy;

/// <summary>
/// One member's legacy virtio-net register file, reached through the owner's LEGACY_*_CFG admin
/// commands (VIRTIO 1.4 "Legacy Interface", virtio-admin.md §4.2/§5): what a transitional device's I/O
/// BAR0 would hold. Driving it drives the member: feature negotiation, queue page frame numbers with
/// the legacy ring layout in the member's own memory table, status (0 resets), queue notify, ISR
/// read-to-clear, and the MSI-X vector registers limited by the member's vector count. The member's
/// vhost-user front end keeps supplying memory, call descriptors (interrupts) and kick descriptors
/// (doorbells). All data is little-endian. Runs on the group's worker, like the admin queue.
/// </summary>
public sealed class LegacyNetInterface
{
    private readonly int _memberId;
    private readonly NetDevice _net;
    private readonly OwnerDrivenMember _member;
    private readonly Func<int> _vectorCount;
    private readonly ILogger _logger;
    private readonly uint[] _queueAddress;
    private readonly ushort[] _queueVector;
    private uint _guestFeatures;
    private ushort _select;
    private ushort _lastNotify;
    private byte _status;
    private byte _isr;
    private ushort _configVector = LegacyLayout.NoVector;
    // Every refusal comes from an admin command the owner's driver sent: bounded, however many it sends.
    private readonly LogRateLimit _refusals = new();

    internal LegacyNetInterface(int memberId, NetDevice net, VhostUserBackend backend, Func<int> vectorCount, ILogger logger)
    {
        _memberId = memberId;
        _net = net;
        _member = new OwnerDrivenMember(backend, Raise, FrontEndReset, logger);
        _vectorCount = vectorCount;
        _logger = logger;
        _queueAddress = new uint[net.QueueCount];
        _queueVector = new ushort[net.QueueCount];
        Array.Fill(_queueVector, LegacyLayout.NoVector);
    }

    /// <summary>Whether a legacy driver is using the member (status not reset).</summary>
    public bool Active => _status != 0;

    /// <summary>Device features bits 0–31: all a legacy driver can see (VERSION_1 and above are out of reach).</summary>
    public uint HostFeatures => (uint)_net.Features;

    /// <summary>LEGACY_COMMON_CFG_READ / LEGACY_DEV_CFG_READ: fills <paramref name="data"/> from one field.</summary>
    public AdminOutcome Read(bool common, int offset, Span<byte> data)
    {
        if (FieldAt(common, offset, data.Length) is not { } f)
            return Refuse(common, offset, data.Length, "read", "does not lie inside one field");
        Span<byte> value = stackalloc byte[8];
        ReadField(common, f, value);
        value.Slice(offset - f.Offset, data.Length).CopyTo(data);
        if (common && f.Offset == LegacyLayout.IsrStatus)
            _isr = 0; // reading ISR clears it
        return AdminOutcome.Ok(data.Length);
    }

    /// <summary>LEGACY_COMMON_CFG_WRITE / LEGACY_DEV_CFG_WRITE: writes bytes of one field (read-modify-write for sub-field writes).</summary>
    public AdminOutcome Write(bool common, int offset, ReadOnlySpan<byte> data)
    {
        if (FieldAt(common, offset, data.Length) is not { } f)
            return Refuse(common, offset, data.Length, "write", "does not lie inside one field");
        if (f.Access == LegacyFieldAccess.ReadOnly)
            return Refuse(common, offset, data.Length, "write", $"targets read-only {f.Name}");
        Span<byte> value = stackalloc byte[8];
        ReadField(common, f, value);
        data.CopyTo(value[(offset - f.Offset)..]);
        return common ? WriteCommonField(f, value) : WriteNetField(value[..f.Size]);
    }

    private static LegacyField? FieldAt(bool common, int offset, int length) =>
        LegacyLayout.FieldOf(common ? LegacyLayout.Common : LegacyLayout.NetConfig, offset, length);

    /// <summary>The whole field's current value, little-endian, zero-extended to 8 bytes.</summary>
    private void ReadField(bool common, LegacyField f, Span<byte> value)
    {
        value.Clear();
        if (common)
            ReadCommonField(f.Offset, value);
        else
            ReadNetField(f.Offset, value);
    }

    /// <summary>LEGACY_NOTIFY_INFO: one member entry (the member's doorbells are its kick descriptors), then the end marker.</summary>
    public static AdminOutcome NotifyInfo(Span<byte> result)
    {
        const int size = 64;
        result[..size].Clear();
        result[0] = 2;  // flags: member device
        result[1] = 2;  // bar: the VF's BAR2 (BAR0 is hardwired to zero); over vhost-user, SET_VRING_KICK per queue
        BinaryPrimitives.WriteUInt64LittleEndian(result[8..], 0);
        return AdminOutcome.Ok(size);
    }

    /// <summary>The device configuration changed (owner set MAC or link): the config bit of ISR.</summary>
    public void ConfigChanged()
    {
        if (Active)
            _isr |= LegacyLayout.IsrConfig;
    }

    private void ReadCommonField(int offset, Span<byte> v)
    {
        int q = _select;
        bool exists = q < _queueAddress.Length;
        switch (offset)
        {
            case LegacyLayout.HostFeatures: BinaryPrimitives.WriteUInt32LittleEndian(v, HostFeatures); break;
            case LegacyLayout.GuestFeatures: BinaryPrimitives.WriteUInt32LittleEndian(v, _guestFeatures); break;
            case LegacyLayout.QueueAddress: BinaryPrimitives.WriteUInt32LittleEndian(v, exists ? _queueAddress[q] : 0); break;
            // Size 0 tells a legacy driver the queue does not exist.
            case LegacyLayout.QueueSize: BinaryPrimitives.WriteUInt16LittleEndian(v, (ushort)(exists ? QueueEntries : 0)); break;
            case LegacyLayout.QueueSelect: BinaryPrimitives.WriteUInt16LittleEndian(v, _select); break;
            case LegacyLayout.QueueNotify: BinaryPrimitives.WriteUInt16LittleEndian(v, _lastNotify); break;
            case LegacyLayout.DeviceStatus:
                // A ring the driver broke makes the device ask for a reset, as a device would.
                v[0] = (byte)(_status | (_member.Faulted ? 0x40 : 0));
                break;
            case LegacyLayout.IsrStatus: v[0] = _isr; break;
            case LegacyLayout.ConfigVector: BinaryPrimitives.WriteUInt16LittleEndian(v, _configVector); break;
            case LegacyLayout.QueueVector: BinaryPrimitives.WriteUInt16LittleEndian(v, exists ? _queueVector[q] : LegacyLayout.NoVector); break;
        }
    }

    private int QueueEntries => Math.Min(LegacyLayout.QueueEntries, _net.MaxQueueSize);

    private AdminOutcome WriteCommonField(LegacyField f, ReadOnlySpan<byte> v)
    {
        int q = _select;
        bool exists = q < _queueAddress.Length;
        switch (f.Offset)
        {
            case LegacyLayout.GuestFeatures:
            {
                if (Claim() is { } busy)
                    return busy;
                uint features = BinaryPrimitives.ReadUInt32LittleEndian(v) & HostFeatures;
                _guestFeatures = features;
                _member.SetFeatures(features);
                return AdminOutcome.Ok();
            }
            case LegacyLayout.QueueAddress:
            {
                if (!exists)
                    return Refuse(true, f.Offset, f.Size, "write", $"selects queue {q}, which does not exist");
                if (Claim() is { } busy)
                    return busy;
                uint pfn = BinaryPrimitives.ReadUInt32LittleEndian(v);
                if (pfn == 0)
                    _member.StopRing(q);
                else
                {
                    ulong desc = (ulong)pfn << SplitRing.LegacyAddressShift;
                    var (avail, used, _) = SplitRing.LegacyLayout(QueueEntries);
                    if (_member.StartRing(q, new RingPlacement(QueueEntries, desc, desc + avail, desc + used)) is { } error)
                        return Refuse(true, f.Offset, f.Size, "write", $"queue {q} address 0x{desc:x}: {error}");
                }
                _queueAddress[q] = pfn;
                return AdminOutcome.Ok();
            }
            case LegacyLayout.QueueSelect:
                _select = BinaryPrimitives.ReadUInt16LittleEndian(v);
                return AdminOutcome.Ok();
            case LegacyLayout.QueueNotify:
            {
                ushort index = BinaryPrimitives.ReadUInt16LittleEndian(v);
                if (index >= _queueAddress.Length)
                    return Refuse(true, f.Offset, f.Size, "write", $"notifies queue {index}, which does not exist");
                _lastNotify = index;
                _member.Notify(index); // a queue that is not running has nothing to do
                return AdminOutcome.Ok();
            }
            case LegacyLayout.DeviceStatus:
                if (v[0] == 0)
                {
                    Reset();
                    return AdminOutcome.Ok();
                }
                if (Claim() is { } claimBusy)
                    return claimBusy;
                _status = v[0];
                return AdminOutcome.Ok();
            case LegacyLayout.ConfigVector:
                _configVector = Vector(BinaryPrimitives.ReadUInt16LittleEndian(v));
                return AdminOutcome.Ok();
            case LegacyLayout.QueueVector:
                if (!exists)
                    return Refuse(true, f.Offset, f.Size, "write", $"selects queue {q}, which does not exist");
                _queueVector[q] = Vector(BinaryPrimitives.ReadUInt16LittleEndian(v));
                return AdminOutcome.Ok();
            default:
                return Refuse(true, f.Offset, f.Size, "write", "is not writable");
        }
    }

    /// <summary>A vector beyond the member's MSI-X table (MEMBER_RESOURCE) is not assigned: it reads back as NO_VECTOR.</summary>
    private ushort Vector(ushort requested) =>
        requested == LegacyLayout.NoVector || requested < _vectorCount() ? requested : LegacyLayout.NoVector;

    private void ReadNetField(int offset, Span<byte> v)
    {
        Span<byte> config = stackalloc byte[Devices.Net.VirtioNet.ConfigSize];
        _net.ReadConfig(0, config);
        int size = offset == LegacyLayout.NetMac ? 6 : 2;
        config.Slice(offset, size).CopyTo(v);
    }

    private AdminOutcome WriteNetField(ReadOnlySpan<byte> mac)
    {
        // Only mac is writable: legacy drivers without CTRL_MAC_ADDR set it byte by byte.
        if (!_net.Trusted)
            return Refuse(false, LegacyLayout.NetMac, mac.Length, "write", "changes the mac of an untrusted member");
        if (NetControl.Apply(_net, VirtioNet.CtrlMac, VirtioNet.CtrlMacAddrSet, mac) != VirtioNet.Ok)
            return Refuse(false, LegacyLayout.NetMac, mac.Length, "write", "sets a multicast or zero mac");
        return AdminOutcome.Ok();
    }

    /// <summary>The first write that drives the device takes it over from the member's own front end.</summary>
    private AdminOutcome? Claim()
    {
        if (_member.Claim() is not { } refused)
            return null;
        _logger.LogLimited(_refusals, LogLevel.Warning, "vf{Member}: legacy access refused: {Reason}", _memberId, refused);
        return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
    }

    /// <summary>Status 0: device reset. Rings stop, registers return to their initial values.</summary>
    private void Reset()
    {
        _member.Release();
        ClearRegisters();
        _logger.LogDebug("vf{Member}: legacy reset", _memberId);
    }

    private void ClearRegisters()
    {
        _guestFeatures = 0;
        _select = 0;
        _lastNotify = 0;
        _status = 0;
        _isr = 0;
        _configVector = LegacyLayout.NoVector;
        Array.Clear(_queueAddress);
        Array.Fill(_queueVector, LegacyLayout.NoVector);
    }

    private AdminOutcome Refuse(bool common, int offset, int length, string what, string why)
    {
        _logger.LogLimited(_refusals, LogLevel.Warning, "vf{Member}: legacy {Block} {What} of {Length} byte(s) at offset {Offset} refused: it {Why}",
            _memberId, common ? "common" : "device config", what, length, offset, why);
        return AdminOutcome.Invalid(AdminQualifier.InvalidField);
    }

    // ---- callbacks of the owner-driven member (worker) ----

    private void Raise(DeviceQueue queue)
    {
        // QEMU's habit, kept here: the queue bit is set whether or not MSI-X delivers the interrupt.
        _isr |= LegacyLayout.IsrQueue;
        if (queue.Index < _queueVector.Length && _queueVector[queue.Index] != LegacyLayout.NoVector)
            queue.SignalCall();
    }

    private void FrontEndReset()
    {
        if (_status != 0)
            _logger.LogInformation("vf{Member}: the member's front end reset or left; legacy state reset", _memberId);
        ClearRegisters();
    }
}
