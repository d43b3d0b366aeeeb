using System.Globalization;
using System.Text.RegularExpressions;

namespace VhostUserVirtio.Tests.Support;

/// <summary>A counted iperf3 TCP transfer between a guest's two NICs (needs <see cref="GuestOptions.Tools"/>).</summary>
public static partial class GuestScripts
{
    /// <summary>QEMU virtio-net-pci options that turn every checksum and segmentation offload off, both ways.</summary>
    public const string NoOffloads = ",csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off," +
        "guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off";

    /// <summary>
    /// Commands for <see cref="PingPair"/>'s <c>then</c>: an iperf3 server on $ip_b, a client on $ip_a
    /// sending exactly <paramref name="bytes"/> bytes (or for <paramref name="seconds"/> when bytes is 0),
    /// then one line "IPERF-RESULT rc=… sent=… received=… bps=…" from the client's JSON report.
    /// </summary>
    public static string IperfTransfer(long bytes, int seconds = 0, int timeoutSeconds = 240)
    {
        string amount = bytes > 0 ? $"-n {bytes}" : $"-t {seconds}";
        return $$"""
            iperf3 -s -B $ip_b -1 >/tmp/iperf-server.log 2>&1 &
            n=0
            while ! grep -q "Server listening" /tmp/iperf-server.log && [ $n -lt 100 ]; do n=$((n + 1)); usleep 100000; done
            timeout {{timeoutSeconds}} iperf3 -c $ip_b -B $ip_a {{amount}} -J >/tmp/iperf.json 2>&1
            rc=$?
            field() { awk -v sum="\"$1\"" -v key="\"$2\"" 'index($0, sum) { f = 1 } f && index($0, key) { gsub(/[^0-9.]/, ""); print; exit }' /tmp/iperf.json; }
            echo "IPERF-RESULT rc=$rc sent=$(field sum_sent bytes) received=$(field sum_received bytes) bps=$(field sum_received bits_per_second)"
            [ $rc -eq 0 ] || { head -c 2000 /tmp/iperf.json; cat /tmp/iperf-server.log; status=4; }
            """;
    }

    public sealed record IperfResult(int ExitCode, long Sent, long Received, double BitsPerSecond);

    public static IperfResult? ParseIperf(IEnumerable<string> lines)
    {
        ArgumentNullException.ThrowIfNull(lines);
        foreach (var line in lines.Reverse())
        {
            var m = IperfLine().Match(line);
            if (!m.Success)
                continue;
            long L(string g) => long.TryParse(m.Groups[g].Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v : -1;
            double bps = double.TryParse(m.Groups["bps"].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : 0;
            return new IperfResult((int)L("rc"), L("sent"), L("received"), bps);
        }
        return null;
    }

    [GeneratedRegex(@"IPERF-RESULT rc=(?<rc>\d+) sent=(?<sent>\d*) received=(?<received>\d*) bps=(?<bps>[0-9.]*)")]
    private static partial Regex IperfLine();
}
