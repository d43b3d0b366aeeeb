using System.Globalization;
using System.Text.RegularExpressions;

namespace VhostUserVirtio.Tests.Support;

/// <summary>Counted traffic between a guest's two NICs while the back end restarts underneath it.</summary>
public static partial class GuestScripts
{
    public const string TrafficStartMarker = "TRAFFIC-START";

    /// <summary>
    /// Commands for <see cref="PingPair"/>'s <c>then</c> (needs <see cref="GuestOptions.Tools"/>): for
    /// <paramref name="seconds"/>, A pings B every 100 ms and streams numbered UDP datagrams to B with
    /// iperf3 at <paramref name="udpBitsPerSecond"/>; then PING-RESULT, PING-SEQS, PING-DUPS and
    /// UDP-RESULT (datagrams sent, lost and out of order, a duplicate counting as out of order).
    /// </summary>
    public static string TrafficThroughRestarts(int seconds, long udpBitsPerSecond = 1_000_000)
    {
        int pings = seconds * 10;
        return $$"""
            # The receiving socket has room for what arrives at once after a restart (the sender's own
            # buffers stay as they are).
            echo 4194304 > /proc/sys/net/core/rmem_max; echo 4194304 > /proc/sys/net/core/rmem_default
            iperf3 -s -B $ip_b -1 >/tmp/iperf-server.log 2>&1 &
            n=0
            while ! grep -q "Server listening" /tmp/iperf-server.log && [ $n -lt 100 ]; do n=$((n + 1)); usleep 100000; done
            echo "{{TrafficStartMarker}} seconds={{seconds}}"
            ping -c {{pings}} -i 0.1 -W 5 -w {{seconds + 30}} -I $ip_a $ip_b > /ping.log 2>&1 &
            ping_pid=$!
            timeout {{seconds + 60}} iperf3 -u -c $ip_b -B $ip_a -b {{udpBitsPerSecond}} -l 200 -t {{seconds}} -J >/tmp/iperf.json 2>&1
            wait $ping_pid
            tx=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /ping.log)
            rx=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /ping.log)
            dups=$(sed -n 's/.* \([0-9]*\) duplicates.*/\1/p' /ping.log)
            echo "PING-RESULT from=$ip_a to=$ip_b transmitted=${tx:-0} received=${rx:-0}"
            echo "PING-SEQS $(sed -n 's/.* seq=\([0-9]*\) .*/\1/p' /ping.log | tr '\n' ' ')"
            echo "PING-DUPS ${dups:-0}"
            # Datagrams the receiving socket or the kernel's input queue had no room for: lost in the
            # guest after the NIC took them (a burst of what piled up during a restart), not on the path.
            rcvbuf=$(awk '/^Udp:/ { if (n++) print $6 }' /proc/net/snmp)
            backlog=0; while read -r _ dropped _; do backlog=$((backlog + 0x$dropped)); done < /proc/net/softnet_stat
            echo "GUEST-DROPS udp_rcvbuf=${rcvbuf:-0} input_backlog=${backlog:-0}"
            # The kernel's own echo counts (both NICs are in this one kernel): requests A sent and B
            # took, replies B sent and A took. busybox ping's tally trails them after restarts.
            echo "GUEST-ICMP $(awk '/^Icmp:/ { if (n++) print "out_echos=" $25 " in_echos=" $10 " out_echo_replies=" $26 " in_echo_replies=" $11 }' /proc/net/snmp)"
            # The receiver's counts, from the end of the client's JSON (iperf3 3.12: "sum" of the server side).
            last() { grep "\"$1\"" /tmp/iperf.json | tail -n 1 | sed 's/[^0-9]//g'; }
            echo "UDP-RESULT packets=$(last packets) lost=$(last lost_packets) out_of_order=$(last out_of_order)"
            grep -q '"error"' /tmp/iperf.json && { head -c 1500 /tmp/iperf.json; status=4; }
            """;
    }

    /// <summary>The receiver's count of a <see cref="TrafficThroughRestarts"/> UDP stream.</summary>
    public sealed record UdpResult(long Packets, long Lost, long OutOfOrder);

    public static UdpResult? ParseUdp(IEnumerable<string> lines)
    {
        var m = lines.Select(l => UdpResultLine().Match(l)).LastOrDefault(m => m.Success);
        if (m == null)
            return null;
        static long N(System.Text.RegularExpressions.Group g) => long.TryParse(g.Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) ? n : -1;
        return new UdpResult(N(m.Groups[1]), N(m.Groups[2]), N(m.Groups[3]));
    }

    /// <summary>The guest kernel's ICMP echo counters (GUEST-ICMP).</summary>
    public sealed record EchoCounts(long RequestsSent, long RequestsReceived, long RepliesSent, long RepliesReceived);

    public static EchoCounts? ParseEchoCounts(IEnumerable<string> lines)
    {
        var m = lines.Select(l => EchoLine().Match(l)).LastOrDefault(m => m.Success);
        if (m == null)
            return null;
        static long N(System.Text.RegularExpressions.Group g) => long.Parse(g.Value, CultureInfo.InvariantCulture);
        return new EchoCounts(N(m.Groups[1]), N(m.Groups[2]), N(m.Groups[3]), N(m.Groups[4]));
    }

    [GeneratedRegex(@"\bGUEST-ICMP out_echos=([0-9]+) in_echos=([0-9]+) out_echo_replies=([0-9]+) in_echo_replies=([0-9]+)")]
    private static partial Regex EchoLine();

    public static int? ParsePingDuplicates(IEnumerable<string> lines)
    {
        var m = lines.Select(l => PingDupsLine().Match(l)).LastOrDefault(m => m.Success);
        return m == null ? null : int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    [GeneratedRegex(@"\bUDP-RESULT packets=([0-9]*) lost=([0-9]*) out_of_order=([0-9]*)")]
    private static partial Regex UdpResultLine();

    [GeneratedRegex(@"\bPING-DUPS ([0-9]+)")]
    private static partial Regex PingDupsLine();
}
