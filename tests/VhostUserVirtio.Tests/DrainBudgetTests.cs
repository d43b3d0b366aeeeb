using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A driver that adds a buffer for every one the device completes keeps the ring non-empty forever.
/// A drain must still hand the thread back after a bounded number of chains, with kicks left
/// suppressed (the worker comes back on its own), or one guest holds the worker that every other
/// ring of the group, the admin queue and the control loop's hand-offs depend on.
/// </summary>
[Trait("tier", "unit")]
public sealed class DrainBudgetTests : IDisposable
{
    private readonly InThreadEchoRing _ring = new(chains: 8, payloadSize: 64);

    public void Dispose() => _ring.Dispose();

    /// <summary>Handles a chain by making it available again at once: the driver is always one step ahead.</summary>
    private struct Republisher(DriverQueue driver, int stopAfter) : IChainHandler
    {
        public int Handled;

        public uint Handle(DescriptorChain chain)
        {
            if (++Handled < stopAfter)
                driver.PublishHead(chain.Head);
            return 0;
        }
    }

    [Fact]
    public async Task A_drain_returns_after_its_budget_even_when_the_driver_never_lets_the_ring_empty()
    {
        _ring.Post();
        // Stops republishing only after a million chains, so an unbounded drain would take a long
        // while; a bounded one returns after its budget.
        var handler = new Republisher(_ring.Driver, stopAfter: 1_000_000);
        var drain = Task.Run(() => _ring.Device.Drain(ref handler));
        var result = await drain.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(result.BudgetSpent);
        Assert.Equal(SplitQueue.DefaultBudget, result.Handled);
        Assert.True(_ring.Device.HasPending, "the driver's buffers must still be there for the next turn");
        // Kicks stay suppressed: the caller promised to come back, the driver need not kick.
        Assert.True(_ring.Driver.EventIdx ? _ring.Driver.AvailEvent != _ring.Driver.AvailIndex : _ring.Driver.DeviceSuppressesKicks);
    }

    [Fact]
    public void A_drain_that_empties_the_ring_within_its_budget_rearms_kicks()
    {
        _ring.Post();
        var handler = new Republisher(_ring.Driver, stopAfter: 0);
        var result = _ring.Device.Drain(ref handler);
        Assert.False(result.BudgetSpent);
        Assert.Equal(_ring.Chains, result.Handled);
        Assert.False(_ring.Device.HasPending);
        Assert.Equal(_ring.Driver.AvailIndex, _ring.Driver.AvailEvent);
    }
}
