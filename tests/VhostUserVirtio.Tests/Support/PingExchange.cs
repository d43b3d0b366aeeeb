using System.Buffers.Binary;
using System.Diagnostics;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// Two-way pings between a real Linux guest and a device the test drives itself (a legacy-driven VF,
/// a managed device driven through the transport queue): the guest pings the test's <see cref="MiniHost"/>
/// while the host answers and pings the guest back, all on the test's own rings.
/// </summary>
public static class PingExchange
{
    public const string GuestReadyMarker = "GUEST-NET-READY", GuestResultMarker = "GUEST-PING-RECEIVED";

    /// <summary>The guest's side: its NIC gets <paramref name="ip"/>, it pings <paramref name="peer"/> five times, prints the count, and stays up.</summary>
    public static string GuestScript(string mac, string ip, string peer) => $$"""
        {{GuestScripts.ShellFunctions}}
        i=$(find_if {{mac}}) || { echo "GUEST-ERROR no interface"; exit 2; }
        echo 1 > /proc/sys/net/ipv6/conf/$i/disable_ipv6 2>/dev/null
        must ip addr add {{ip}}/24 dev $i
        must ip link set $i up
        wait_carrier $i 30
        echo {{GuestReadyMarker}}
        out=$(ping -c 5 -i 0.3 -W 2 -w 30 {{peer}} 2>&1); echo "$out"
        rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
        echo "{{GuestResultMarker}} ${rx:-0}"
        # Stay up while the host side pings this guest.
        n=0; while [ $n -lt 300 ] && [ ! -e /tmp/never ]; do usleep 100000; n=$((n + 1)); done
        exit 0
        """;

    /// <summary>
    /// Serves the guest's ARP and pings while pinging it five times, on one loop over the test's device
    /// (<paramref name="receive"/> with a timeout in ms, <paramref name="send"/>). Returns the guest's
    /// result line once both directions are done, or whatever it had when the deadline passed.
    /// </summary>
    public static string? Run(QemuGuest guest, MiniHost host, string guestIp, Func<int, byte[]?> receive, Action<byte[]> send, TimeSpan deadline)
    {
        var ip = MiniHost.ParseIp(guestIp);
        uint key = BinaryPrimitives.ReadUInt32BigEndian(ip);
        var clock = Stopwatch.StartNew();
        ushort sent = 0;
        long nextSend = 0;
        string? guestResult = null;
        while (clock.Elapsed < deadline)
        {
            var frame = receive(100);
            if (frame != null && host.Handle(frame) is { } answer)
                send(answer);
            if (clock.ElapsedMilliseconds >= nextSend && sent < 5)
            {
                send(host.Neighbours.TryGetValue(key, out var guestMac) ? host.EchoRequest(guestMac, ip, ++sent) : host.ArpRequest(ip));
                nextSend = clock.ElapsedMilliseconds + 300;
            }
            guestResult ??= guest.Lines.FirstOrDefault(l => l.StartsWith(GuestResultMarker, StringComparison.Ordinal));
            if (guestResult != null && host.EchoRepliesSeen.Distinct().Count() == 5)
                break;
        }
        return guestResult;
    }
}
