using System.Diagnostics;
using System.Globalization;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Managed devices under a real Linux guest: the owner driver creates one through the transport
/// queue (DEV_CREATE), QEMU hot-plugs its socket into a running guest through QMP, the guest's stock
/// virtio-net driver brings it up and pings a host in a network namespace the test owns, and the
/// device is unplugged (device_del) and destroyed (DEV_DESTROY) again. The daemon runs inside the
/// namespace with a TAP uplink bridged to br0, which holds the pinged address. Deadlines are
/// minutes: QEMU emulates the CPU.
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestHotPlugTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan StartDeadline = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan BootDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan PlugDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan UnplugDeadline = TimeSpan.FromMinutes(2);
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);
    private const string GuestIp = "10.0.0.1", HostIp = "10.0.0.2";
    // A PCIe root port for the NIC to be plugged into: q35's root bus (pcie.0) takes no hot-plugs.
    private const string RootPort = "hp0";
    private const string ScriptDoneMarker = "HOTPLUG-SCRIPT-EXIT";

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-hotplug-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>
    /// The whole life of a managed device served to a VMM: its socket is there when DEV_CREATE
    /// returns; QEMU attaches it while the guest runs and the guest pings through it; while QEMU is
    /// attached the transport queue may read the device but not change it (EBUSY); after device_del
    /// DEV_DESTROY disconnects QEMU, removes the socket, drops the id from DEV_LIST and makes the id
    /// fail (EINVAL/INVALID_MEMBER).
    /// </summary>
    [Fact]
    public void A_managed_device_created_through_the_transport_queue_is_hot_plugged_into_a_running_guest_pinged_through_and_destroyed()
    {
        using var ns = NetNamespace.Create("vuvhp");
        using var daemon = StartDaemon(ns);
        // One connection for the whole test: each owner-driver connection is the owner's driver.
        using var owner = OwnerDriver.Connect(Path.Combine(_dir, "pf.sock"));
        Assert.NotNull(owner.Transport);
        var transport = owner.Transport;
        var (id, vdevSocket, mac) = Create(transport, daemon);
        using var guest = StartGuest(mac, out var qmpSocket);
        using var qmp = QmpClient.Connect(qmpSocket, StartDeadline);
        var nic = PlugAndPing(qmp, guest, daemon, id, vdevSocket, mac);

        // QEMU drives the device: the transport queue reads it, but changing it would pull it from under the VMM.
        var busy = Assert.Throws<TransportCommandException>(() => transport.StatusSet(id, 0));
        Assert.Equal(AdminStatus.Ebusy, busy.Status);
        _ = transport.StatusGet(id);
        Assert.Equal(1u, transport.DevInfo(id).VirtioDeviceId);

        // Unplug as a hypervisor would: the guest lets the PCI device go first; QEMU stays connected.
        var deleted = Unplug(qmp, guest, nic);
        guest.WaitForLine(GuestScripts.HotPlugGoneMarker, UnplugDeadline);
        output.WriteLine($"device_del -> DEVICE_DELETED after {deleted.TotalSeconds:F1} s");

        Destroy(transport, daemon, id, vdevSocket);

        // QEMU lets go of the back end that already left it.
        qmp.RemoveBackend(nic.NetdevId, nic.ChardevId);
        Assert.False(qmp.HasChardev(nic.ChardevId), $"{nic.ChardevId} is still in QEMU");
        Finish(qmp, guest, daemon);
    }

    /// <summary>
    /// DEV_DESTROY does not wait for the VMM: destroying a device a guest still has plugged and up
    /// disconnects QEMU at once. QEMU and the guest carry on (the NIC only loses its back end), the
    /// hypervisor can still unplug it, and the next DEV_CREATE gets a new id, never the destroyed one.
    /// </summary>
    [Fact]
    public void Destroying_a_managed_device_a_guest_still_uses_disconnects_qemu_which_survives_and_unplugs_it_later()
    {
        using var ns = NetNamespace.Create("vuvhp");
        using var daemon = StartDaemon(ns);
        using var owner = OwnerDriver.Connect(Path.Combine(_dir, "pf.sock"));
        Assert.NotNull(owner.Transport);
        var transport = owner.Transport;
        var (id, vdevSocket, mac) = Create(transport, daemon);
        using var guest = StartGuest(mac, out var qmpSocket);
        using var qmp = QmpClient.Connect(qmpSocket, StartDeadline);
        var nic = PlugAndPing(qmp, guest, daemon, id, vdevSocket, mac);

        Destroy(transport, daemon, id, vdevSocket);
        // QEMU noticed and keeps running: its monitor answers, and the NIC is still the guest's.
        Assert.Equal("running", qmp.Execute("query-status").GetProperty("status").GetString());
        Assert.False(guest.HasExited, $"QEMU exited when its back end went away. {guest.Describe()}");
        Assert.DoesNotContain(guest.Lines, l => l.Contains(GuestScripts.HotPlugGoneMarker, StringComparison.Ordinal));

        var deleted = Unplug(qmp, guest, nic);
        guest.WaitForLine(GuestScripts.HotPlugGoneMarker, UnplugDeadline);
        output.WriteLine($"device_del after DEV_DESTROY -> DEVICE_DELETED after {deleted.TotalSeconds:F1} s");
        qmp.RemoveBackend(nic.NetdevId, nic.ChardevId);
        Assert.False(qmp.HasChardev(nic.ChardevId), $"{nic.ChardevId} is still in QEMU");

        uint next = transport.DevCreate();
        Assert.NotEqual(id, next);
        Assert.Equal([next], transport.DevList());
        transport.DevDestroy(next);
        Finish(qmp, guest, daemon);
    }

    /// <summary>The daemon in <paramref name="ns"/>, its TAP uplink on br0 with the address the guest pings.</summary>
    private DaemonProcess StartDaemon(NetNamespace ns)
    {
        string tap = "vuvh" + Guid.NewGuid().ToString("N")[..6];
        string pf = Path.Combine(_dir, "pf.sock");
        var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "1", "--uplink", tap], launcher: ns.Launcher);
        try
        {
            daemon.WaitUntil(() => File.Exists(pf) && daemon.Output.Contains("ready:", StringComparison.Ordinal), StartDeadline, "pf.sock");
            ns.Run("ip", "link", "add", "br0", "type", "bridge");
            ns.Run("ip", "addr", "add", HostIp + "/24", "dev", "br0");
            ns.Run("ip", "link", "set", tap, "master", "br0", "up");
            ns.Run("ip", "link", "set", "br0", "up");
            return daemon;
        }
        catch
        {
            daemon.Dispose();
            throw;
        }
    }

    /// <summary>DEV_CREATE; the device's socket is there when it returns, and its MAC is read from its config.</summary>
    private (uint Id, string Socket, string Mac) Create(TransportQueueClient transport, DaemonProcess daemon)
    {
        var clock = Stopwatch.StartNew();
        uint id = transport.DevCreate();
        var created = clock.Elapsed;
        string socket = Path.Combine(_dir, $"vdev{id}.sock");
        daemon.WaitUntil(() => File.Exists(socket), Deadline, socket);
        var seen = clock.Elapsed;
        Assert.Contains(id, transport.DevList());
        string mac = string.Join(':', transport.CfgRead(id, 0, 6).Select(b => b.ToString("x2", CultureInfo.InvariantCulture)));
        Assert.Equal($"02:56:56:01:00:{id:x2}", mac); // the binding's MAC block for managed devices, + id
        output.WriteLine($"DEV_CREATE -> vdev{id} in {created.TotalMilliseconds:F1} ms; socket seen after {seen.TotalMilliseconds:F1} ms; MAC {mac}");
        return (id, socket, mac);
    }

    /// <summary>A guest with no NIC yet, a QMP monitor, and a root port to plug one into, waiting for <paramref name="mac"/>.</summary>
    private QemuGuest StartGuest(string mac, out string qmpSocket)
    {
        qmpSocket = Path.Combine(_dir, "qmp.sock");
        return QemuGuest.Start(new GuestOptions
        {
            Name = "hotplug",
            Memory = "256M",
            // The wrapper keeps the guest up after the script (so the script itself need not hold): its
            // interface goes before QEMU finishes the unplug (DEVICE_DELETED), and QEMU still has to let
            // go of the netdev afterwards.
            TestScript = $"sh /hotplug.sh\necho \"{ScriptDoneMarker} $?\"\nsleep 3600\n",
            Files = new Dictionary<string, string> { ["/hotplug.sh"] = GuestScripts.HotPlugPing(mac, GuestIp, HostIp, count: 5, intervalSeconds: 0.5, holdSeconds: 1) },
            QmpSocket = qmpSocket,
            ExtraQemuArgs = ["-device", $"pcie-root-port,id={RootPort},bus=pcie.0,chassis=1,slot=1"],
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
    }

    /// <summary>Hot-plugs the device's socket once the guest waits for it; returns when the guest has pinged through it.</summary>
    private HotPluggedNic PlugAndPing(QmpClient qmp, QemuGuest guest, DaemonProcess daemon, uint id, string socket, string mac)
    {
        guest.WaitForLine(GuestScripts.HotPlugWaitingMarker, BootDeadline);
        int before = daemon.OutputLength;
        var clock = Stopwatch.StartNew();
        var nic = qmp.HotPlugNic($"cv{id}", socket, $"nv{id}", $"dv{id}", mac, bus: RootPort);
        guest.WaitForLine(GuestScripts.HotPlugAppearedMarker, PlugDeadline);
        var appeared = clock.Elapsed;
        guest.WaitForLine(GuestScripts.HotPlugPingedMarker, PlugDeadline);
        var pinged = clock.Elapsed;
        output.WriteLine($"hot-plug -> interface in the guest after {appeared.TotalSeconds:F1} s; pings done after {pinged.TotalSeconds:F1} s");
        output.WriteLine(guest.Lines.LastOrDefault(l => l.Contains("PING-RESULT", StringComparison.Ordinal)) ?? "no PING-RESULT");
        var result = GuestScripts.ParseHotPlug(guest.Lines).Single(e => e.Marker == GuestScripts.HotPlugPingedMarker);
        Assert.True(result.Received > 0, $"no ping was answered through vdev{id}. {guest.Describe()}\ndaemon:\n{daemon.Output}");
        Assert.Contains($"vdev{id}: front end connected on {socket}", daemon.OutputFrom(before), StringComparison.Ordinal);
        return nic;
    }

    /// <summary>device_del, and the wait for the guest to release the device (DEVICE_DELETED); the netdev stays.</summary>
    private static TimeSpan Unplug(QmpClient qmp, QemuGuest guest, HotPluggedNic nic)
    {
        var clock = Stopwatch.StartNew();
        qmp.Execute("device_del", new { id = nic.DeviceId });
        Assert.True(qmp.WaitForEvent("DEVICE_DELETED", UnplugDeadline, QmpHotPlug.IsDeviceDeleted(nic.DeviceId)) != null,
            $"no DEVICE_DELETED for {nic.DeviceId}: the guest did not release it. {guest.Describe()}");
        return clock.Elapsed;
    }

    /// <summary>DEV_DESTROY: the VMM is disconnected, the socket removed, and the id gone from DEV_LIST and refused.</summary>
    private void Destroy(TransportQueueClient transport, DaemonProcess daemon, uint id, string socket)
    {
        int before = daemon.OutputLength;
        var clock = Stopwatch.StartNew();
        transport.DevDestroy(id);
        daemon.WaitUntil(() => !File.Exists(socket), Deadline, $"{socket} to be removed");
        var removed = clock.Elapsed;
        daemon.WaitUntil(() => daemon.OutputFrom(before).Contains($"vdev{id}: front end disconnected", StringComparison.Ordinal),
            Deadline, $"vdev{id}'s VMM to be disconnected");
        output.WriteLine($"DEV_DESTROY -> socket removed after {removed.TotalMilliseconds:F1} ms");
        foreach (var line in daemon.Output.Split('\n').Where(l => l.Contains($"vdev{id}", StringComparison.Ordinal)))
            output.WriteLine("daemon: " + line.TrimEnd());
        Assert.DoesNotContain(id, transport.DevList());
        var gone = Assert.Throws<TransportCommandException>(() => transport.DevInfo(id));
        Assert.Equal((AdminStatus.Einval, AdminQualifier.InvalidMember), (gone.Status, gone.Qualifier));
        gone = Assert.Throws<TransportCommandException>(() => transport.StatusGet(id));
        Assert.Equal((AdminStatus.Einval, AdminQualifier.InvalidMember), (gone.Status, gone.Qualifier));
        gone = Assert.Throws<TransportCommandException>(() => transport.DevDestroy(id));
        Assert.Equal((AdminStatus.Einval, AdminQualifier.InvalidMember), (gone.Status, gone.Qualifier));
    }

    /// <summary>The guest's script saw the NIC come, answer and go; the daemon is still up; QEMU quits.</summary>
    private static void Finish(QmpClient qmp, QemuGuest guest, DaemonProcess daemon)
    {
        Assert.EndsWith($"{ScriptDoneMarker} 0", guest.WaitForLine(ScriptDoneMarker, UnplugDeadline), StringComparison.Ordinal);
        Assert.Equal([GuestScripts.HotPlugWaitingMarker, GuestScripts.HotPlugAppearedMarker, GuestScripts.HotPlugPingedMarker, GuestScripts.HotPlugGoneMarker],
            GuestScripts.ParseHotPlug(guest.Lines).Select(e => e.Marker));
        Assert.DoesNotContain(guest.Lines, l => l.Contains("GUEST-ERROR", StringComparison.Ordinal));
        Assert.False(daemon.HasExited, $"the daemon exited:\n{daemon.Output}");
        try { qmp.Execute("quit"); }
        catch (IOException) { } // QEMU may close the monitor before its reply arrives
        Assert.True(guest.WaitForExit(Deadline), "QEMU did not quit");
    }
}
