using SharpFuzz;
using VhostUserVirtio.Fuzz;

// Usage:
//   Harness TARGET                    run under afl-fuzz (AFL++ persistent mode through SharpFuzz)
//   Harness TARGET --seeds DIR        write the target's seed corpus into DIR
//   Harness TARGET --replay PATH...   run each file (or every file in a folder) once; exit 1 if one throws
//   Harness TARGET --repeat DIR SECS  run DIR's files over and over, printing the open descriptor count
if (args.Length < 1 || !FuzzTargets.All.TryGetValue(args[0], out var target))
{
    Console.Error.WriteLine($"usage: VhostUserVirtio.Fuzz TARGET [--seeds DIR | --replay PATH... | --repeat DIR SECONDS]; targets: {string.Join(", ", FuzzTargets.All.Keys)}");
    return 2;
}
string name = args[0];
if (args.Length > 1)
    TraceSink.Install();
switch (args.Length > 1 ? args[1] : null)
{
    case null:
        Fuzzer.Run(stream =>
        {
            using var copy = new MemoryStream();
            stream.CopyTo(copy);
            target(copy.GetBuffer().AsSpan(0, (int)copy.Length));
        });
        return 0;
    case "--seeds":
        Directory.CreateDirectory(args[2]);
        foreach (var (seed, bytes) in Seeds.For(name))
            File.WriteAllBytes(Path.Combine(args[2], seed), bytes);
        return 0;
    case "--replay":
        int failed = 0;
        foreach (var file in args.Skip(2).SelectMany(p => Directory.Exists(p) ? Directory.GetFiles(p) : [p]).Order())
        {
            try
            {
                target(File.ReadAllBytes(file));
                Console.WriteLine($"ok   {file}");
            }
            catch (Exception e)
            {
                failed++;
                Console.WriteLine($"FAIL {file}: {e}");
            }
        }
        return failed == 0 ? 0 : 1;
    case "--repeat":
        var inputs = Directory.GetFiles(args[2]).Select(File.ReadAllBytes).ToArray();
        var until = DateTime.UtcNow.AddSeconds(double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture));
        long runs = 0;
        var next = DateTime.UtcNow;
        while (DateTime.UtcNow < until)
        {
            foreach (var input in inputs)
                target(input);
            runs += inputs.Length;
            if (DateTime.UtcNow >= next)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
                Console.WriteLine($"{runs} runs, {Directory.GetFiles("/proc/self/fd").Length} descriptors open, {Environment.WorkingSet >> 20} MiB resident");
                next = DateTime.UtcNow.AddSeconds(10);
            }
        }
        return 0;
    default:
        Console.Error.WriteLine($"unknown option {args[1]}");
        return 2;
}

/// <summary>
/// Instrumented assemblies record each edge in AFL's shared memory, which exists only under
/// afl-fuzz: the other modes give them a private buffer to write into instead.
/// </summary>
internal static unsafe class TraceSink
{
    public static void Install()
    {
        if (SharpFuzz.Common.Trace.SharedMem == null)
            SharpFuzz.Common.Trace.SharedMem = (byte*)System.Runtime.InteropServices.NativeMemory.AllocZeroed(1 << 20);
    }
}
