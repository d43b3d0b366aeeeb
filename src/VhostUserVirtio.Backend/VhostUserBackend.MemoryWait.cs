using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend;

// A ring with a size, addresses and a kick but no guest memory waits: vhost-user lets the memory
// table come later (ADD_MEM_REG, a changed table), so such a ring is not refused. But a front end
// whose guest RAM is not shared (QEMU without share=on, libvirt without <access mode='shared'/>)
// never sends any, and its device would look up while forwarding nothing. So the wait is logged as
// a warning when a ring becomes ready without memory and when the driver sets DRIVER_OK over such rings.
public sealed partial class VhostUserBackend
{
    // One line of each kind per device per minute at most: a front end resending its setup cannot flood the log.
    private readonly LogRateLimit _noMemoryLog = new(burst: 1, window: TimeSpan.FromMinutes(1));
    private readonly LogRateLimit _driverOkWithoutMemoryLog = new(burst: 1, window: TimeSpan.FromMinutes(1));

    /// <summary>Rings that have everything to start except guest memory (none once a memory table arrives).</summary>
    public int RingsWaitingForMemory =>
        _memory.Current.Regions.Count != 0 ? 0 : _queues.Count(q => !q.Started && q.Kick != null && q.UserAddresses != null && q.Size != 0);

    private void WarnRingWithoutMemory(DeviceQueue q) =>
        _logger.LogLimited(_noMemoryLog, LogLevel.Warning,
            "{Device}: queue {Queue} is ready but the front end has sent no guest memory (no SET_MEM_TABLE or ADD_MEM_REG): it stays " +
            "stopped and the device forwards nothing until memory comes. Guest RAM must be shared: QEMU memory-backend-memfd with " +
            "share=on, libvirt <memoryBacking><source type='memfd'/><access mode='shared'/>", _device.Name, q.Index);

    private void WarnDriverOkWithoutMemory(byte status)
    {
        if ((status & (byte)DeviceStatus.DriverOk) == 0 || OwnerDriven || RingsWaitingForMemory is not (> 0 and var waiting))
            return;
        _logger.LogLimited(_driverOkWithoutMemoryLog, LogLevel.Warning,
            "{Device}: the driver set DRIVER_OK but {Waiting} ring(s) have no guest memory (no SET_MEM_TABLE or ADD_MEM_REG): the device " +
            "forwards nothing. Guest RAM must be shared: QEMU memory-backend-memfd with share=on, libvirt <access mode='shared'/>", _device.Name, waiting);
    }
}
