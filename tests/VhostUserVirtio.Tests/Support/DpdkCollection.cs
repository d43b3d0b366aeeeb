using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// Tests that run real DPDK processes. They busy-poll cores, so they never run next to other tests
/// (the machine has two cores) and assert only "something flowed, and the counts are consistent".
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DpdkCollection
{
    public const string Name = "DPDK";
}
