using BenchmarkDotNet.Running;

namespace VhostUserVirtio.Benchmarks;

public static class Program
{
    /// <summary>
    /// Pass BenchmarkDotNet arguments through, e.g. --filter '*SplitQueue*' or --list flat; or
    /// <c>vdev-footprint [count] [--header]</c> for the memory of idle managed devices.
    /// </summary>
    public static void Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "vdev-footprint")
        {
            if (args.Length > 2 && args[2] == "--header")
                Console.WriteLine(ManagedDeviceFootprint.Header);
            ManagedDeviceFootprint.Run(args.Length > 1 ? int.Parse(args[1]) : 1000);
            return;
        }
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
    }
}
