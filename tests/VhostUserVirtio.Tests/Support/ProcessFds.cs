namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// The descriptors a process holds, read from /proc/PID/fd: how many, and what each refers to
/// ("pipe:[123]", "socket:[456]", a path…), to check that a descriptor handed to a back end was
/// closed or that a back end does not pile descriptors up.
/// </summary>
public static class ProcessFds
{
    /// <summary>What each open descriptor of <paramref name="pid"/> (default: this process) refers to.</summary>
    public static List<string> Targets(int? pid = null)
    {
        var targets = new List<string>();
        foreach (var entry in Directory.EnumerateFileSystemEntries($"/proc/{pid?.ToString() ?? "self"}/fd"))
        {
            try
            {
                if (new FileInfo(entry).LinkTarget is { } target)
                    targets.Add(target);
            }
            catch (IOException) { } // closed while we looked
            catch (UnauthorizedAccessException) { }
        }
        return targets;
    }

    public static int Count(int pid) => Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd").Count();

    /// <summary>The lowest descriptor number <paramref name="pid"/> does not use: with that as its limit, it can open nothing more.</summary>
    public static int LowestFree(int pid)
    {
        var used = Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd").Select(e => int.Parse(Path.GetFileName(e))).ToHashSet();
        int n = 0;
        while (used.Contains(n))
            n++;
        return n;
    }

    /// <summary>Waits until no descriptor of this process refers to <paramref name="target"/>.</summary>
    public static bool WaitUntilNoneRefersTo(string target, int timeoutMs = 10_000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while (Targets().Contains(target))
        {
            if (Environment.TickCount64 > deadline)
                return false;
            Thread.Sleep(10);
        }
        return true;
    }
}
