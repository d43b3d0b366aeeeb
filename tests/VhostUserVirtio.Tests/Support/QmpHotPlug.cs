using System.Text.Json;

namespace VhostUserVirtio.Tests.Support;

/// <summary>The QMP ids of a hot-plugged NIC, for <see cref="QmpHotPlug.Unplug(QmpClient, HotPluggedNic, TimeSpan)"/>.</summary>
public sealed record HotPluggedNic(string ChardevId, string NetdevId, string DeviceId, string Mac);

/// <summary>
/// Hot-plugging a vhost-user NIC into a running QEMU through QMP, and unplugging it: the chardev to
/// the back end's socket, the vhost-user netdev on it, and a virtio-net-pci device on that. The
/// argument builders are separate so their JSON can be checked without QEMU.
/// </summary>
public static class QmpHotPlug
{
    /// <summary>
    /// chardev-add: a socket chardev connecting to <paramref name="socketPath"/> (the back end
    /// listens). With <paramref name="reconnectSeconds"/> QEMU reconnects after the back end goes away.
    /// </summary>
    public static Dictionary<string, object> ChardevAddArguments(string chardevId, string socketPath, int? reconnectSeconds = null)
    {
        var data = new Dictionary<string, object>
        {
            ["addr"] = new Dictionary<string, object> { ["type"] = "unix", ["data"] = new Dictionary<string, object> { ["path"] = socketPath } },
            ["server"] = false,
        };
        if (reconnectSeconds is { } r)
            data["reconnect"] = r;
        return new Dictionary<string, object>
        {
            ["id"] = chardevId,
            ["backend"] = new Dictionary<string, object> { ["type"] = "socket", ["data"] = data },
        };
    }

    /// <summary>netdev_add: a vhost-user netdev with one queue pair on the chardev.</summary>
    public static Dictionary<string, object> NetdevAddArguments(string netdevId, string chardevId) => new()
    {
        ["type"] = "vhost-user",
        ["id"] = netdevId,
        ["chardev"] = chardevId,
        ["queues"] = 1,
    };

    /// <summary>
    /// device_add: virtio-net-pci on the netdev. vectors=0 (INTx): QEMU 7.2 under TCG crashes when a
    /// guest enables MSI-X on a vhost-user virtio-net device (docs/qemu-configs).
    /// </summary>
    /// <param name="bus">The hot-plug capable bus, e.g. a root port from <see cref="RootPortArguments"/>: q35's pcie.0 is not.</param>
    public static Dictionary<string, object> DeviceAddArguments(string deviceId, string netdevId, string mac, string? bus = null)
    {
        var arguments = new Dictionary<string, object>
        {
            ["driver"] = "virtio-net-pci",
            ["id"] = deviceId,
            ["netdev"] = netdevId,
            ["mac"] = mac,
            ["vectors"] = 0,
        };
        if (bus != null)
            arguments["bus"] = bus;
        return arguments;
    }

    /// <summary>
    /// QEMU command-line arguments for an empty PCIe root port to plug a device into later: q35's root
    /// bus refuses hot-plug ("Bus 'pcie.0' does not support hotplugging"). One port per device plugged
    /// at the same time; <paramref name="chassis"/> must differ between ports.
    /// </summary>
    public static string[] RootPortArguments(string portId, int chassis = 1) =>
        ["-device", $"pcie-root-port,id={portId},chassis={chassis}"];

    /// <summary>
    /// Plugs a NIC backed by the vhost-user socket <paramref name="socketPath"/> into the running
    /// guest. What was added before a failure is removed again, so a failed plug leaves nothing behind.
    /// </summary>
    public static HotPluggedNic HotPlugNic(this QmpClient qmp, string chardevId, string socketPath, string netdevId, string deviceId, string mac,
        string? bus = null, int? reconnectSeconds = null)
    {
        qmp.Execute("chardev-add", ChardevAddArguments(chardevId, socketPath, reconnectSeconds));
        try
        {
            qmp.Execute("netdev_add", NetdevAddArguments(netdevId, chardevId));
            try
            {
                qmp.Execute("device_add", DeviceAddArguments(deviceId, netdevId, mac, bus));
                return new HotPluggedNic(chardevId, netdevId, deviceId, mac);
            }
            catch
            {
                TryExecute(qmp, "netdev_del", new { id = netdevId });
                throw;
            }
        }
        catch
        {
            TryExecute(qmp, "chardev-remove", new { id = chardevId });
            throw;
        }
    }

    /// <summary>
    /// Unplugs the NIC: device_del, then waits for its DEVICE_DELETED event (the guest has to let go of
    /// a PCI device first, so this takes the guest's cooperation), then netdev_del and, if the netdev
    /// did not take it along, chardev-remove.
    /// Throws <see cref="TimeoutException"/> when the guest never released the device.
    /// </summary>
    public static void Unplug(this QmpClient qmp, string deviceId, string netdevId, string chardevId, TimeSpan timeout)
    {
        // An id can be plugged and unplugged more than once: wait for a DEVICE_DELETED newer than these.
        var match = IsDeviceDeleted(deviceId);
        int before = qmp.Events.Count(e => e.Name == "DEVICE_DELETED" && match(e.Data));
        qmp.Execute("device_del", new { id = deviceId });
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (qmp.Events.Count(e => e.Name == "DEVICE_DELETED" && match(e.Data)) <= before)
        {
            if (clock.Elapsed >= timeout)
                throw new TimeoutException($"no DEVICE_DELETED for {deviceId} within {timeout.TotalSeconds:F0} s: the guest did not release it");
            Thread.Sleep(100);
        }
        qmp.Execute("netdev_del", new { id = netdevId });
        // A vhost-user netdev takes its chardev with it when deleted (QEMU 7.2); remove it only if it stayed.
        if (qmp.HasChardev(chardevId))
            qmp.Execute("chardev-remove", new { id = chardevId });
    }

    /// <summary>query-chardev: whether a chardev with this id exists.</summary>
    public static bool HasChardev(this QmpClient qmp, string chardevId) =>
        qmp.Execute("query-chardev").EnumerateArray().Any(c => c.TryGetProperty("label", out var l) && l.GetString() == chardevId);

    public static void Unplug(this QmpClient qmp, HotPluggedNic nic, TimeSpan timeout) =>
        qmp.Unplug(nic.DeviceId, nic.NetdevId, nic.ChardevId, timeout);

    /// <summary>Matches the DEVICE_DELETED event of the device itself (QEMU also sends one per child object, with only a path).</summary>
    public static Func<JsonElement, bool> IsDeviceDeleted(string deviceId) => data =>
        data.ValueKind == JsonValueKind.Object && data.TryGetProperty("device", out var d) && d.ValueKind == JsonValueKind.String
        && d.GetString() == deviceId;

    private static void TryExecute(QmpClient qmp, string command, object arguments)
    {
        try { qmp.Execute(command, arguments); }
        catch (Exception e) when (e is QmpException or IOException or TimeoutException) { }
    }
}
