using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Group.Transport;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Group;

/// <summary>
/// The group owner (PF) as served over vhost-user (docs/owner-binding.md): a virtio-net device plus
/// VIRTIO_F_ADMIN_VQ and VIRTIO_F_SR_IOV, its admin queue after the net queues, with
/// VIRTIO_F_TRANSPT_VQ its transport queue after that, and the owner information block at config
/// offset 0xC0 telling the owner driver where those queues are and how many VFs and managed devices
/// there may be.
/// </summary>
public sealed class OwnerDevice : IVirtioDevice, INetDeviceControl
{
    private readonly DeviceGroup _group;
    private readonly ILogger _logger;
    private readonly LogRateLimit _numVfsLog = new(); // the owner's driver may write num_vfs as often as it likes

    internal OwnerDevice(NetDevice net, int totalVfs, DeviceGroup group, ILogger logger)
    {
        Net = net;
        TotalVfs = totalVfs;
        _group = group;
        _logger = logger;
        Admin = new AdminCommandProcessor(group, logger, group.Options.ResourceObjectOpcodes, group.Options.AdminProfile);
        if (group.Options.MaxManagedDevices > 0)
        {
            Transport = new TransportQueueProcessor(group, AdminQueueIndex + 1, logger);
            _transportFeature = VirtioFeature.Mask(group.Options.TransportFeatureBit);
        }
    }

    private readonly ulong _transportFeature;

    /// <summary>The transport queue and its managed devices; null when the owner offers none (max_vdevs 0).</summary>
    public TransportQueueProcessor? Transport { get; }

    public NetDevice Net { get; }
    public AdminCommandProcessor Admin { get; }
    public int TotalVfs { get; }
    public int NumVfs => _group.NumVfs;
    public int AdminQueueIndex => Net.QueueCount;

    public string Name => Net.Name;
    public ulong Features => Net.Features | VirtioFeature.Mask(VirtioFeature.AdminVq) | VirtioFeature.Mask(VirtioFeature.SrIov) | _transportFeature;
    public ProtocolFeatures ExtraProtocolFeatures => Net.ExtraProtocolFeatures;
    public int QueueCount => Net.QueueCount + 1 + (Transport != null ? 1 : 0);
    public int MaxQueueSize => Net.MaxQueueSize;
    public int ConfigSize => OwnerInformation.Offset + OwnerInformation.Size;

    public void ReadConfig(int offset, Span<byte> data)
    {
        Span<byte> config = stackalloc byte[OwnerInformation.Offset + OwnerInformation.Size];
        config.Clear();
        Net.ReadConfig(0, config[..Net.ConfigSize]);
        var info = config[OwnerInformation.Offset..];
        BinaryPrimitives.WriteUInt16LittleEndian(info[OwnerInformation.AdminQueueIndex..], (ushort)AdminQueueIndex);
        BinaryPrimitives.WriteUInt16LittleEndian(info[OwnerInformation.AdminQueueNum..], 1);
        BinaryPrimitives.WriteUInt16LittleEndian(info[OwnerInformation.TvqIndex..], (ushort)(Transport?.QueueIndex ?? 0));
        BinaryPrimitives.WriteUInt16LittleEndian(info[OwnerInformation.TvqNum..], Transport != null ? (ushort)1 : (ushort)0);
        BinaryPrimitives.WriteUInt16LittleEndian(info[OwnerInformation.TotalVfs..], (ushort)TotalVfs);
        BinaryPrimitives.WriteUInt16LittleEndian(info[OwnerInformation.NumVfs..], (ushort)NumVfs);
        BinaryPrimitives.WriteUInt16LittleEndian(info[OwnerInformation.MaxVdevs..], (ushort)(Transport?.MaxDevices ?? 0));
        BinaryPrimitives.WriteUInt16LittleEndian(info[OwnerInformation.BindingVersion..], 0);
        config.Slice(offset, data.Length).CopyTo(data);
    }

    /// <summary>Only num_vfs is writable: writing it is VF Enable/Disable (see <see cref="DeviceGroup.SetNumVfs"/>).</summary>
    public bool WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
        if (offset != OwnerInformation.Offset + OwnerInformation.NumVfs || data.Length != 2)
            return false;
        int wanted = BinaryPrimitives.ReadUInt16LittleEndian(data);
        string? refused = _group.SetNumVfs(wanted);
        if (refused != null)
            _logger.LogLimited(_numVfsLog, LogLevel.Warning, "{Device}: num_vfs {Wanted} refused: {Reason}", Name, wanted, refused);
        return refused == null;
    }

    public void SetDriverFeatures(ulong features) =>
        Net.SetDriverFeatures(features & ~(VirtioFeature.Mask(VirtioFeature.AdminVq) | VirtioFeature.Mask(VirtioFeature.SrIov) | _transportFeature));

    /// <summary>The admin queue or the transport queue, which are the owner's own (not the net device's).</summary>
    private bool IsOwnerQueue(int index) => index == AdminQueueIndex || (Transport != null && index == Transport.QueueIndex);

    public void QueueStarted(DeviceQueue queue)
    {
        if (!IsOwnerQueue(queue.Index))
            Net.QueueStarted(queue);
    }

    public void QueueStopped(DeviceQueue queue)
    {
        if (!IsOwnerQueue(queue.Index))
            Net.QueueStopped(queue);
    }

    public bool WantsKicks(int queueIndex) => IsOwnerQueue(queueIndex) || Net.WantsKicks(queueIndex);

    public void ProcessQueue(DeviceQueue queue)
    {
        if (queue.Index == AdminQueueIndex)
        {
            var handler = new AdminHandler(Admin);
            queue.Drain(ref handler);
        }
        else if (Transport != null && queue.Index == Transport.QueueIndex)
        {
            var handler = new TransportHandler(Transport);
            queue.Drain(ref handler);
        }
        else
        {
            Net.ProcessQueue(queue);
        }
    }

    public void Reset()
    {
        Net.Reset();
        Admin.Reset();
        Transport?.OwnerReset();
    }

    public void AnnounceMac(ReadOnlySpan<byte> mac) => Net.AnnounceMac(mac);

    public bool SetMtu(uint mtu) => Net.SetMtu(mtu);

    private readonly struct AdminHandler(AdminCommandProcessor admin) : IChainHandler
    {
        public uint Handle(DescriptorChain chain) => admin.Handle(chain);
    }

    private readonly struct TransportHandler(TransportQueueProcessor transport) : IChainHandler
    {
        public uint Handle(DescriptorChain chain) => transport.Handle(chain);
    }
}
