using System.Diagnostics;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A managed device under a real Linux guest: the owner driver creates it through the transport
/// queue (DEV_CREATE), QEMU hot-plugs its socket into a running guest through QMP, the guest's stock
/// virtio-net driver brings it up and pings a host in a network namespace the test owns, and the
/// device is unplugged (device_del) and destroyed (DEV_DESTROY) again. The daemon runs inside the
/// namespace with a TAP uplink bridged to br0, which holds the pinged address. Deadlines are
/// minutes: QEMU emulates the CPU.
/// </summary>
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
        string tap = "vuvh" + Guid.NewGuid().ToString("N")[..6];
        string pf = Path.Combine(_dir, "pf.sock");
        using var daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", "1", "--uplink", tap], launcher: ns.Launcher);
        daemon.WaitUntil(() => File.Exists(pf) && daemon.Output.Contains("ready:", StringComparison.Ordinal), StartDeadline, "pf.sock");
        ns.Run("ip", "link", "add", "br0", "type", "bridge");
        ns.Run("ip", "addr", "add", HostIp + "/24", "dev", "br0");
        ns.Run("ip", "link", "set", tap, "master", "br0", "up");
        ns.Run("ip", "link", "set", "br0", "up");

        // One connection for the whole test: each owner-driver connection is the owner's driver.
        using var owner = OwnerDriver.Connect(pf);
        Assert.NotNull(owner.Transport);
        var transport = owner.Transport;

        var clock = Stopwatch.StartNew();
        uint id = transport.DevCreate();
        var created = clock.Elapsed;
        string vdevSocket = Path.Combine(_dir, $"vdev{id}.sock");
        daemon.WaitUntil(() => File.Exists(vdevSocket), Deadline, vdevSocket);
        var socketSeen = clock.Elapsed;
        Assert.Contains(id, transport.DevList());
        string mac = string.Join(':', transport.CfgRead(id, 0, 6).Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture)));
        Assert.Equal($"02:56:56:01:00:{id:x2}", mac); // the binding's MAC block for managed devices, + id
        output.WriteLine($"DEV_CREATE -> vdev{id} in {created.TotalMilliseconds:F1} ms; socket seen after {socketSeen.TotalMilliseconds:F1} ms; MAC {mac}");

        string qmpSocket = Path.Combine(_dir, "qmp.sock");
        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "hotplug",
            Memory = "256M",
            // The guest stays up after the script: its interface goes before QEMU finishes the unplug
            // (DEVICE_DELETED), and QEMU still has to let go of the netdev after DEV_DESTROY.
            TestScript = $"sh /hotplug.sh\necho \"{ScriptDoneMarker} $?\"\nsleep 3600\n",
            Files = new Dictionary<string, string> { ["/hotplug.sh"] = GuestScripts.HotPlugPing(mac, GuestIp, HostIp, count: 5, intervalSeconds: 0.5) },
            QmpSocket = qmpSocket,
            ExtraQemuArgs = ["-device", $"pcie-root-port,id={RootPort},bus=pcie.0,chassis=1,slot=1"],
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        using var qmp = QmpClient.Connect(qmpSocket, StartDeadline);
        guest.WaitForLine(GuestScripts.HotPlugWaitingMarker, BootDeadline);

        int beforePlug = daemon.OutputLength;
        var plugClock = Stopwatch.StartNew();
        var nic = qmp.HotPlugNic($"cv{id}", vdevSocket, $"nv{id}", $"dv{id}", mac, bus: RootPort);
        guest.WaitForLine(GuestScripts.HotPlugAppearedMarker, PlugDeadline);
        var appeared = plugClock.Elapsed;
        guest.WaitForLine(GuestScripts.HotPlugPingedMarker, PlugDeadline);
        var pinged = plugClock.Elapsed;
        output.WriteLine($"hot-plug -> interface in the guest after {appeared.TotalSeconds:F1} s; pings done after {pinged.TotalSeconds:F1} s");
        output.WriteLine(guest.Lines.LastOrDefault(l => l.Contains("PING-RESULT", StringComparison.Ordinal)) ?? "no PING-RESULT");
        var pingedEvent = GuestScripts.ParseHotPlug(guest.Lines).Single(e => e.Marker == GuestScripts.HotPlugPingedMarker);
        Assert.True(pingedEvent.Received > 0, $"no ping was answered through vdev{id}. {guest.Describe()}\ndaemon:\n{daemon.Output}");
        Assert.Contains($"vdev{id}: front end connected on {vdevSocket}", daemon.OutputFrom(beforePlug), StringComparison.Ordinal);

        // QEMU drives the device: the transport queue reads it, but changing it would pull it from under the VMM.
        var busy = Assert.Throws<TransportCommandException>(() => transport.StatusSet(id, 0));
        Assert.Equal(AdminStatus.Ebusy, busy.Status);
        _ = transport.StatusGet(id);
        Assert.Equal(1u, transport.DevInfo(id).VirtioDeviceId);

        // Unplug as a hypervisor would: the guest lets the PCI device go first; QEMU stays connected.
        var unplugClock = Stopwatch.StartNew();
        qmp.Execute("device_del", new { id = nic.DeviceId });
        Assert.True(qmp.WaitForEvent("DEVICE_DELETED", UnplugDeadline, QmpHotPlug.IsDeviceDeleted(nic.DeviceId)) != null,
            $"no DEVICE_DELETED for {nic.DeviceId}: the guest did not release it. {guest.Describe()}");
        var deleted = unplugClock.Elapsed;
        guest.WaitForLine(GuestScripts.HotPlugGoneMarker, UnplugDeadline);

        int beforeDestroy = daemon.OutputLength;
        var destroyClock = Stopwatch.StartNew();
        transport.DevDestroy(id);
        daemon.WaitUntil(() => !File.Exists(vdevSocket), Deadline, $"{vdevSocket} to be removed");
        var socketGone = destroyClock.Elapsed;
        daemon.WaitUntil(() => daemon.OutputFrom(beforeDestroy).Contains($"vdev{id}: front end disconnected", StringComparison.Ordinal),
            Deadline, $"vdev{id}'s VMM to be disconnected");
        output.WriteLine($"device_del -> DEVICE_DELETED after {deleted.TotalSeconds:F1} s; DEV_DESTROY -> socket removed after {socketGone.TotalMilliseconds:F1} ms");
        foreach (var line in daemon.Output.Split('\n').Where(l => l.Contains($"vdev{id}", StringComparison.Ordinal)))
            output.WriteLine("daemon: " + line.TrimEnd());
        Assert.DoesNotContain(id, transport.DevList());
        var gone = Assert.Throws<TransportCommandException>(() => transport.DevInfo(id));
        Assert.Equal((AdminStatus.Einval, AdminQualifier.InvalidMember), (gone.Status, gone.Qualifier));
        gone = Assert.Throws<TransportCommandException>(() => transport.DevDestroy(id));
        Assert.Equal((AdminStatus.Einval, AdminQualifier.InvalidMember), (gone.Status, gone.Qualifier));

        // QEMU lets go of the back end that already left it.
        qmp.RemoveBackend(nic.NetdevId, nic.ChardevId);
        Assert.False(qmp.HasChardev(nic.ChardevId), $"{nic.ChardevId} is still in QEMU");

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
