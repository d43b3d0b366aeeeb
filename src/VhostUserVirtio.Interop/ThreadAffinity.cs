namespace VhostUserVirtio.Interop;

/// <summary>Which CPUs a thread may run on (sched_setaffinity), and which CPUs the machine has online.</summary>
public static unsafe class ThreadAffinity
{
    // cpu_set_t as glibc sizes it: 1024 CPUs.
    private const int MaskWords = 1024 / 64;

    /// <summary>The largest CPU number a mask here can name.</summary>
    public const int MaxCpu = MaskWords * 64 - 1;

    /// <summary>The calling thread's kernel id (gettid).</summary>
    public static int CurrentThreadId() => Libc.GetTid();

    /// <summary>Restricts the calling thread to <paramref name="cpu"/>.</summary>
    public static void PinCurrentThread(int cpu)
    {
        if ((uint)cpu > MaxCpu)
            throw new ArgumentOutOfRangeException(nameof(cpu), $"CPU numbers go up to {MaxCpu}");
        ulong* mask = stackalloc ulong[MaskWords];
        new Span<ulong>(mask, MaskWords).Clear();
        mask[cpu / 64] = 1UL << (cpu % 64);
        NativeException.Check(Libc.SchedSetAffinity(0, (nuint)(MaskWords * sizeof(ulong)), mask), "sched_setaffinity");
    }

    /// <summary>The CPUs the calling thread may run on now (sched_getaffinity).</summary>
    public static IReadOnlyList<int> CurrentThreadCpus()
    {
        ulong* mask = stackalloc ulong[MaskWords];
        new Span<ulong>(mask, MaskWords).Clear();
        NativeException.Check(Libc.SchedGetAffinity(0, (nuint)(MaskWords * sizeof(ulong)), mask), "sched_getaffinity");
        var cpus = new List<int>();
        for (int cpu = 0; cpu <= MaxCpu; cpu++)
            if ((mask[cpu / 64] & (1UL << (cpu % 64))) != 0)
                cpus.Add(cpu);
        return cpus;
    }

    /// <summary>
    /// The CPUs online now, from /sys/devices/system/cpu/online (a list such as "0-3,6"); null when
    /// the file cannot be read or parsed.
    /// </summary>
    public static IReadOnlySet<int>? OnlineCpus(string path = "/sys/devices/system/cpu/online")
    {
        try
        {
            return ParseList(File.ReadAllText(path).Trim(), out var cpus) == null ? cpus : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// Parses a CPU list as the kernel writes one ("1", "0,1", "2-3", "0-1,4"). Returns why it is not
    /// one, or null.
    /// </summary>
    public static string? ParseList(string text, out SortedSet<int> cpus)
    {
        cpus = new SortedSet<int>();
        if (string.IsNullOrWhiteSpace(text))
            return "the list is empty";
        foreach (var part in text.Split(','))
        {
            var range = part.Trim().Split('-');
            if (range.Length > 2 || !int.TryParse(range[0], out int first) || first < 0 ||
                (range.Length == 2 && (!int.TryParse(range[1], out int last) || last < first)))
                return $"'{part.Trim()}' is not a CPU number or a range like 2-3";
            int end = range.Length == 2 ? int.Parse(range[1]) : first;
            if (end > MaxCpu)
                return $"CPU {end} is beyond {MaxCpu}";
            for (int cpu = first; cpu <= end; cpu++)
                cpus.Add(cpu);
        }
        return null;
    }
}
