using BenchmarkDotNet.Running;

namespace VhostUserVirtio.Benchmarks;

public static class Program
{
    /// <summary>Pass BenchmarkDotNet arguments through, e.g. --filter '*SplitQueue*' or --list flat.</summary>
    public static void Main(string[] args) => BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
}
