using System.Text;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// What a process holds, read from /proc/PID: open descriptors (and what each points at), threads,
/// memory mappings and VmSize. Taken before and after some hostile input, the difference shows
/// descriptors, threads or guest-memory mappings the process kept.
/// </summary>
public sealed record ProcCounters(int Pid, string[] Fds, string[] Threads, string[] Maps, long VmSizeKb)
{
    /// <summary>Reads the counters of <paramref name="pid"/>; entries that vanish while being read are skipped.</summary>
    public static ProcCounters Read(int pid)
    {
        var fds = new List<string>();
        foreach (var path in SafeList($"/proc/{pid}/fd"))
        {
            try
            {
                fds.Add(new FileInfo(path).LinkTarget ?? "?");
            }
            catch (IOException) { } // closed between the listing and the readlink
            catch (UnauthorizedAccessException) { }
        }
        var threads = new List<string>();
        foreach (var task in SafeList($"/proc/{pid}/task"))
        {
            try
            {
                threads.Add(File.ReadAllText(Path.Combine(task, "comm")).Trim());
            }
            catch (IOException) { } // the thread ended meanwhile
        }
        string[] maps = File.ReadAllLines($"/proc/{pid}/maps");
        long vmSize = 0;
        foreach (var line in File.ReadAllLines($"/proc/{pid}/status"))
            if (line.StartsWith("VmSize:", StringComparison.Ordinal))
                vmSize = long.Parse(line["VmSize:".Length..].Trim().Split(' ')[0]);
        return new ProcCounters(pid, fds.ToArray(), threads.ToArray(), maps, vmSize);
    }

    private static string[] SafeList(string directory)
    {
        try
        {
            return Directory.GetFileSystemEntries(directory);
        }
        catch (DirectoryNotFoundException)
        {
            return [];
        }
    }

    /// <summary>Descriptors whose target names a memfd a front end handed over (guest RAM).</summary>
    public int MemFdDescriptors => Fds.Count(IsGuestMemFd);

    /// <summary>Mappings of memfds a front end handed over: guest RAM regions currently mapped.</summary>
    public int MemFdMappings => Maps.Count(IsGuestMemFd);

    // The runtime maps JIT'ed code twice through a memfd of its own ("doublemapper", for W^X); that one is not guest RAM.
    private static bool IsGuestMemFd(string text) =>
        text.Contains("/memfd:", StringComparison.Ordinal) && !text.Contains("/memfd:doublemapper", StringComparison.Ordinal);

    /// <summary>Descriptor targets reduced to their kind ("socket", "pipe", "anon_inode:[eventfd]", "/memfd:name", a path).</summary>
    public static string Kind(string target)
    {
        int bracket = target.IndexOf(":[", StringComparison.Ordinal);
        if (bracket > 0 && !target.StartsWith("anon_inode:", StringComparison.Ordinal))
            return target[..bracket];
        return target.EndsWith(" (deleted)", StringComparison.Ordinal) ? target[..^" (deleted)".Length] : target;
    }

    /// <summary>
    /// How these counters exceed <paramref name="baseline"/> beyond the given slack, or null when
    /// they do not. Guest-memory descriptors and mappings get no slack: only a front end creates memfds.
    /// </summary>
    public string? ExcessOver(ProcCounters baseline, Slack slack)
    {
        var problems = new List<string>();
        if (Fds.Length > baseline.Fds.Length + slack.Fds)
            problems.Add($"{Fds.Length} open descriptors, baseline {baseline.Fds.Length} (+{slack.Fds} allowed)");
        if (MemFdDescriptors > baseline.MemFdDescriptors)
            problems.Add($"{MemFdDescriptors} memfd descriptors open, baseline {baseline.MemFdDescriptors}");
        if (MemFdMappings > baseline.MemFdMappings)
            problems.Add($"{MemFdMappings} memfd mappings, baseline {baseline.MemFdMappings}");
        if (Threads.Length > baseline.Threads.Length + slack.Threads)
            problems.Add($"{Threads.Length} threads, baseline {baseline.Threads.Length} (+{slack.Threads} allowed)");
        if (Maps.Length > baseline.Maps.Length + slack.Maps)
            problems.Add($"{Maps.Length} mappings, baseline {baseline.Maps.Length} (+{slack.Maps} allowed)");
        // glibc gives each thread that allocates its own malloc arena, reserving 64 MiB of address
        // space: a thread the runtime added (within the thread slack) moves VmSize by that much.
        long vmAllowed = slack.VmSizeKb + Math.Max(0, Threads.Length - baseline.Threads.Length) * ArenaPerThreadKb;
        if (VmSizeKb > baseline.VmSizeKb + vmAllowed)
            problems.Add($"VmSize {VmSizeKb} kB, baseline {baseline.VmSizeKb} kB (+{vmAllowed} kB allowed)");
        return problems.Count == 0 ? null : string.Join("; ", problems) + "\n" + DifferenceFrom(baseline);
    }

    /// <summary>Descriptor kinds, thread names and mapped files that grew since <paramref name="baseline"/>, for failure messages.</summary>
    public string DifferenceFrom(ProcCounters baseline)
    {
        var text = new StringBuilder();
        Grown("descriptors", Fds.Select(Kind), baseline.Fds.Select(Kind), text);
        Grown("threads", Threads, baseline.Threads, text);
        Grown("mappings", Maps.Select(MappedName), baseline.Maps.Select(MappedName), text);
        var kbBefore = MappedKb(baseline.Maps);
        var grownKb = MappedKb(Maps).Select(x => (x.Key, Kb: x.Value - kbBefore.GetValueOrDefault(x.Key)))
            .Where(x => x.Kb > 0).OrderByDescending(x => x.Kb).Take(8).ToList();
        if (grownKb.Count > 0)
            text.AppendLine("  mapped kB grown: " + string.Join(", ", grownKb.Select(x => $"{x.Key} +{x.Kb}")));
        return text.ToString();
    }

    private static Dictionary<string, long> MappedKb(IEnumerable<string> maps) =>
        maps.GroupBy(MappedName).ToDictionary(g => g.Key, g => g.Sum(line =>
        {
            var range = line.Split(' ', 2)[0].Split('-');
            return (long)((Convert.ToUInt64(range[1], 16) - Convert.ToUInt64(range[0], 16)) >> 10);
        }));

    // "7f.. rw-s 00000000 00:01 1234   /memfd:guest-ram-0 (deleted)" → "/memfd:guest-ram-0 (deleted)"; anonymous → "[anonymous]".
    private static string MappedName(string line)
    {
        var parts = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
        return parts.Length >= 6 ? parts[5].Trim() : "[anonymous]";
    }

    private static void Grown(string what, IEnumerable<string> now, IEnumerable<string> before, StringBuilder text)
    {
        var was = before.GroupBy(x => x).ToDictionary(g => g.Key, g => g.Count());
        var grown = now.GroupBy(x => x)
            .Select(g => (Name: g.Key, Now: g.Count(), Was: was.GetValueOrDefault(g.Key)))
            .Where(x => x.Now > x.Was)
            .OrderByDescending(x => x.Now - x.Was)
            .Take(12)
            .ToList();
        if (grown.Count > 0)
            text.AppendLine($"  {what} grown: " + string.Join(", ", grown.Select(x => $"{x.Name} {x.Was}→{x.Now}")));
    }

    public override string ToString() =>
        $"{Fds.Length} fds ({MemFdDescriptors} memfd), {Threads.Length} threads, {Maps.Length} mappings ({MemFdMappings} memfd), VmSize {VmSizeKb} kB";

    /// <summary>A malloc arena (64 MiB) and a thread stack (1.5 MiB) with its guard, in kB.</summary>
    public const long ArenaPerThreadKb = (64 + 2) << 10;

    /// <summary>Growth tolerated as runtime noise rather than a leak.</summary>
    public readonly record struct Slack(int Fds, int Threads, int Maps, long VmSizeKb);
}
