using System.Text.Json;
using System.Text.Json.Nodes;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>The hot-plug harness without QEMU: the QMP arguments it sends and the guest script it runs.</summary>
[Trait("tier", "unit")]
public sealed class HotPlugHarnessTests
{
    private static void AssertJson(string expected, object actual)
    {
        var a = JsonSerializer.SerializeToNode(actual);
        Assert.True(JsonNode.DeepEquals(JsonNode.Parse(expected), a), $"expected {expected}\nactual   {a?.ToJsonString()}");
    }

    [Fact]
    public void Hot_plug_adds_a_client_socket_chardev_a_one_queue_vhost_user_netdev_and_an_intx_virtio_net_pci()
    {
        AssertJson("""
            {"id": "cv1", "backend": {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": "/s/vdev1.sock"}}, "server": false}}}
            """, QmpHotPlug.ChardevAddArguments("cv1", "/s/vdev1.sock"));
        AssertJson("""
            {"id": "cv1", "backend": {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": "/s/vdev1.sock"}}, "server": false, "reconnect": 1}}}
            """, QmpHotPlug.ChardevAddArguments("cv1", "/s/vdev1.sock", reconnectSeconds: 1));
        AssertJson("""{"type": "vhost-user", "id": "nv1", "chardev": "cv1", "queues": 1}""", QmpHotPlug.NetdevAddArguments("nv1", "cv1"));
        // vectors=0: QEMU 7.2 under TCG crashes once a guest enables MSI-X on a vhost-user virtio-net device.
        AssertJson("""{"driver": "virtio-net-pci", "id": "dv1", "netdev": "nv1", "mac": "02:56:56:00:01:01", "vectors": 0}""",
            QmpHotPlug.DeviceAddArguments("dv1", "nv1", "02:56:56:00:01:01"));
        // q35's root bus cannot take a hot-plugged device: a root port on the command line can.
        AssertJson("""{"driver": "virtio-net-pci", "id": "dv1", "netdev": "nv1", "mac": "02:56:56:00:01:01", "vectors": 0, "bus": "hp1"}""",
            QmpHotPlug.DeviceAddArguments("dv1", "nv1", "02:56:56:00:01:01", bus: "hp1"));
        Assert.Equal(["-device", "pcie-root-port,id=hp1,chassis=2"], QmpHotPlug.RootPortArguments("hp1", chassis: 2));
    }

    [Fact]
    public void Unplug_waits_for_the_device_deleted_event_of_the_device_itself_not_of_its_children()
    {
        var match = QmpHotPlug.IsDeviceDeleted("dv1");
        using var device = JsonDocument.Parse("""{"device": "dv1", "path": "/machine/peripheral/dv1"}""");
        using var child = JsonDocument.Parse("""{"path": "/machine/peripheral/dv1/virtio-backend"}""");
        using var other = JsonDocument.Parse("""{"device": "dv2", "path": "/machine/peripheral/dv2"}""");
        Assert.True(match(device.RootElement));
        Assert.False(match(child.RootElement));
        Assert.False(match(other.RootElement));
        Assert.False(match(default));
    }

    [Fact]
    public void The_hot_plug_guest_script_waits_for_the_mac_within_its_deadline_pings_and_waits_for_the_unplug()
    {
        var script = GuestScripts.HotPlugPing("02:56:56:00:01:0A", "10.0.0.9", "10.0.0.1", count: 7, intervalSeconds: 0.2,
            appearSeconds: 90, goneSeconds: 45);
        Assert.Contains("mac=02:56:56:00:01:0a;", script, StringComparison.Ordinal);
        Assert.Contains("find_if_within $mac 90", script, StringComparison.Ordinal);
        Assert.Contains("ping -c 7 -i 0.2 ", script, StringComparison.Ordinal);
        Assert.Contains("$((45 * 10))", script, StringComparison.Ordinal);
        // The markers come in the order the test acts on them.
        int Where(string marker) => script.IndexOf($"echo \"{marker} ", StringComparison.Ordinal);
        Assert.True(Where(GuestScripts.HotPlugWaitingMarker) >= 0);
        Assert.True(Where(GuestScripts.HotPlugWaitingMarker) < Where(GuestScripts.HotPlugAppearedMarker));
        Assert.True(Where(GuestScripts.HotPlugAppearedMarker) < Where(GuestScripts.HotPlugPingedMarker));
        Assert.True(Where(GuestScripts.HotPlugPingedMarker) < Where(GuestScripts.HotPlugGoneMarker));
        Assert.DoesNotContain("\r", script, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() => GuestScripts.HotPlugPing("02:00:00:00:00:01", "10.0.0.9", "10.0.0.1", count: 0));
    }

    [Fact]
    public void The_hot_plug_guest_script_is_valid_shell()
    {
        // sh -n parses without running: a quoting slip in the generated text shows here, not minutes into a guest boot.
        var path = Path.Combine(Path.GetTempPath(), $"vuv-hotplug-{Environment.ProcessId}-{Guid.NewGuid():N}.sh");
        try
        {
            File.WriteAllText(path, GuestScripts.HotPlugPing("02:56:56:00:01:01", "10.0.0.9", "10.0.0.1"));
            using var sh = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("sh", ["-n", path]) { RedirectStandardError = true })!;
            var errors = sh.StandardError.ReadToEnd();
            Assert.True(sh.WaitForExit(10_000), "sh -n did not finish");
            Assert.True(sh.ExitCode == 0, errors);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Hot_plug_markers_are_read_from_a_console_with_kernel_noise()
    {
        string[] console =
        [
            "HOTPLUG-WAITING mac=02:56:56:00:01:01",
            "[   30.1] virtio_net virtio2 eth1: renamed",
            "HOTPLUG-APPEARED 02:56:56:00:01:01 if=eth1",
            "PING-RESULT from=10.0.0.9 to=10.0.0.1 transmitted=5 received=5 min=0.5 avg=1.0 max=2.0",
            "[   33.0] random noise HOTPLUG-PINGED 02:56:56:00:01:01 received=5",
            "HOTPLUG-GONE 02:56:56:00:01:01 if=eth1",
        ];
        var events = GuestScripts.ParseHotPlug(console);
        Assert.Equal([GuestScripts.HotPlugWaitingMarker, GuestScripts.HotPlugAppearedMarker, GuestScripts.HotPlugPingedMarker, GuestScripts.HotPlugGoneMarker],
            events.Select(e => e.Marker));
        Assert.All(events, e => Assert.Equal("02:56:56:00:01:01", e.Mac));
        Assert.Equal("eth1", events[1].Interface);
        Assert.Equal(5, events[2].Received);
        Assert.Equal(5, GuestScripts.Parse(console).Pings.Single().Received);
    }
}
