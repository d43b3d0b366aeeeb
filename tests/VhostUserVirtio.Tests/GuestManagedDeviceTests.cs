using System.Buffers.Binary;
using System.Diagnostics;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A managed device created and driven only through the owner's transport queue (path 1 of
/// docs/owner-binding.md), its rings in a DMA window of the owner's memory and its interrupts MSI
/// writes there, talking IPv4 through the switch with a real Linux guest (QEMU, stock virtio-net
/// driver) on a VF: both ping each other.
/// </summary>
public sealed class GuestManagedDeviceTests(ITestOutputHelper output) : IDisposable
{
    private const string GuestMac = "02:56:56:00:00:01"; // VF1's own: an untrusted VF may send only from it
    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-gm-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public void A_device_driven_only_through_the_transport_queue_pings_a_linux_guest_on_a_vf_and_answers_its_pings()
    {
        using var backend = new GroupBackend(vfs: 1);
        using var owner = OwnerDriver.Connect(backend.Socket(0));
        var transport = owner.Transport!;
        uint id = transport.DevCreate();
        using var vdev = ManagedNetDriver.Start(owner, id);
        var host = new MiniHost(vdev.Mac, MiniHost.ParseIp("10.0.0.1"));
        output.WriteLine($"managed device {id} up: features 0x{vdev.Features:x}, mac {Convert.ToHexString(vdev.Mac)}, " +
            $"DMA window 0x{vdev.WindowStart:x}+0x{vdev.WindowSize:x}");

        using var guest = QemuGuest.Start(new GuestOptions
        {
            Name = "managed-peer",
            Nics = [new GuestNic(backend.Socket(1), GuestMac)],
            TestScript = $$"""
                {{GuestScripts.ShellFunctions}}
                i=$(find_if {{GuestMac}}) || { echo "GUEST-ERROR no interface"; exit 2; }
                echo 1 > /proc/sys/net/ipv6/conf/$i/disable_ipv6 2>/dev/null
                must ip addr add 10.0.0.2/24 dev $i
                must ip link set $i up
                wait_carrier $i 30
                echo GUEST-NET-READY
                out=$(ping -c 5 -i 0.3 -W 2 -w 30 10.0.0.1 2>&1); echo "$out"
                rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
                echo "GUEST-PING-RECEIVED ${rx:-0}"
                # Stay up while the managed device pings this guest.
                n=0; while [ $n -lt 300 ] && [ ! -e /tmp/never ]; do usleep 100000; n=$((n + 1)); done
                exit 0
                """,
            ConsoleLogPath = Path.Combine(_dir, "console.log"),
            Log = output.WriteLine,
        });
        guest.WaitForBoot(TimeSpan.FromMinutes(3));
        guest.WaitForLine("GUEST-NET-READY", TimeSpan.FromMinutes(2));

        // Serve the guest's ARP and pings while pinging it: one loop on the managed device's rings.
        var guestIp = MiniHost.ParseIp("10.0.0.2");
        uint guestKey = BinaryPrimitives.ReadUInt32BigEndian(guestIp);
        var clock = Stopwatch.StartNew();
        ushort sent = 0;
        long nextSend = 0;
        string? guestResult = null;
        while (clock.Elapsed < TimeSpan.FromMinutes(3))
        {
            var frame = vdev.Receive(100);
            if (frame != null && host.Handle(frame) is { } answer)
                vdev.Send(answer);
            if (clock.ElapsedMilliseconds >= nextSend && sent < 5)
            {
                vdev.Send(host.Neighbours.TryGetValue(guestKey, out var guestMac)
                    ? host.EchoRequest(guestMac, guestIp, ++sent)
                    : host.ArpRequest(guestIp));
                nextSend = clock.ElapsedMilliseconds + 300;
            }
            guestResult ??= guest.Lines.FirstOrDefault(l => l.StartsWith("GUEST-PING-RECEIVED", StringComparison.Ordinal));
            if (guestResult != null && host.EchoRepliesSeen.Distinct().Count() == 5)
                break;
        }
        output.WriteLine($"managed device: {host.EchoRepliesSeen.Distinct().Count()}/5 echo replies from the guest, answered {host.EchoRequestsAnswered} " +
            $"echo requests; guest: {guestResult}; MSI data rx 0x{vdev.MsiData(0):x} tx 0x{vdev.MsiData(1):x}");

        Assert.True(host.EchoRepliesSeen.Distinct().Count() == 5, $"the guest answered {host.EchoRepliesSeen.Distinct().Count()} of 5 pings. {guest.Describe()}");
        Assert.True(guestResult == "GUEST-PING-RECEIVED 5", $"the guest's pings: {guestResult}. {guest.Describe()}");
        Assert.True(host.EchoRequestsAnswered >= 5);
        // Interrupts arrived as MSI writes into the owner's memory.
        Assert.Equal(0x100u, vdev.MsiData(0));
        Assert.Equal(0x101u, vdev.MsiData(1));
        // Everything went through the switch between the managed device and the VF.
        var ports = backend.Group.Status().Ports;
        Assert.True(ports.Single(p => p.Name == $"vdev{id}").Counters.TxPackets >= 11);
        Assert.True(ports.Single(p => p.Name == "vf1").Counters.TxPackets >= 11);
    }
}
