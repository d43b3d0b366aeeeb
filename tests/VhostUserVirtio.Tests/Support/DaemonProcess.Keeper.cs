using System.Globalization;
using System.Text.RegularExpressions;

namespace VhostUserVirtio.Tests.Support;

/// <summary>A keeper (`vhost-virtio keep -- serve …`) run as this process: the daemons it starts.</summary>
public sealed partial class DaemonProcess
{
    private static readonly TimeSpan KeptDaemonDeadline = TimeSpan.FromSeconds(60);

    /// <summary>The pid of the daemon this keeper started as its <paramref name="start"/>th (from 1), once that daemon is ready.</summary>
    public int WaitForKeptDaemon(int start)
    {
        int pid = 0;
        WaitUntil(() =>
        {
            var m = KeptDaemonStarted().Matches(Output).FirstOrDefault(m => m.Groups[2].Value == start.ToString(CultureInfo.InvariantCulture));
            if (m == null)
                return false;
            pid = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            return Output.Contains($"; pid {pid}", StringComparison.Ordinal);
        }, KeptDaemonDeadline, $"daemon start {start}");
        return pid;
    }

    [GeneratedRegex(@"daemon started \(pid ([0-9]+), start ([0-9]+)\)")]
    private static partial Regex KeptDaemonStarted();
}
