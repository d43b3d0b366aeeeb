using Microsoft.Extensions.Logging.Abstractions;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The switch's per-worker lookup cache: a burst to one destination from one source looks the table
/// up once, and a change of the table (a move, ageing, an unplugged port) is never hidden by it.
/// </summary>
[Trait("tier", "unit")]
public sealed class SwitchLookupCacheTests
{
    private static readonly Mac S = Mac.Parse("02:00:00:00:00:01");
    private static readonly Mac D = Mac.Parse("02:00:00:00:00:02");

    private static (L2Switch Switch, CountingPort S, CountingPort D, CountingPort E) Learned(TimeSpan? ageing = null)
    {
        var sw = new L2Switch(NullLogger.Instance, ageing);
        var s = new CountingPort("s");
        var d = new CountingPort("d");
        var e = new CountingPort("e");
        sw.Attach(s); sw.Attach(d); sw.Attach(e);
        sw.Forward(s, new Frame(CountingPort.Ethernet(Mac.Broadcast, S)));
        sw.Forward(d, new Frame(CountingPort.Ethernet(Mac.Broadcast, D)));
        sw.Forward(s, new Frame(CountingPort.Ethernet(D, S))); // primes the cache: D → d
        return (sw, s, d, e);
    }

    [Fact]
    public void A_burst_to_one_destination_from_one_source_looks_the_table_up_at_most_once_per_address()
    {
        var (sw, s, d, _) = Learned();
        int before = d.Received;
        long lookups = sw.Lookups;
        var frame = CountingPort.Ethernet(D, S);
        for (int i = 0; i < 32; i++)
            sw.Forward(s, new Frame(frame));
        Assert.Equal(before + 32, d.Received);
        Assert.True(sw.Lookups - lookups <= 2, $"{sw.Lookups - lookups} lookups for a burst of 32 frames of one flow");
    }

    [Fact]
    public void A_cached_destination_that_moves_to_another_port_is_followed()
    {
        var (sw, s, d, e) = Learned();
        sw.Forward(e, new Frame(CountingPort.Ethernet(S, D))); // D now sends from e
        int dGot = d.Received, eGot = e.Received;
        sw.Forward(s, new Frame(CountingPort.Ethernet(D, S)));
        Assert.Equal(dGot, d.Received);
        Assert.Equal(eGot + 1, e.Received);
    }

    [Fact]
    public void A_cached_destination_that_aged_out_is_flooded_not_sent_from_the_cache()
    {
        var (sw, s, _, _) = Learned(ageing: TimeSpan.FromMilliseconds(100));
        Thread.Sleep(250);
        long floods = sw.Floods;
        sw.Forward(s, new Frame(CountingPort.Ethernet(D, S)));
        Assert.Equal(floods + 1, sw.Floods);
    }

    [Fact]
    public void A_cached_destination_on_an_unplugged_port_is_no_longer_sent_there()
    {
        var (sw, s, d, e) = Learned();
        sw.Detach(d);
        int dGot = d.Received, eGot = e.Received;
        long floods = sw.Floods;
        sw.Forward(s, new Frame(CountingPort.Ethernet(D, S)));
        Assert.Equal(dGot, d.Received);
        Assert.Equal(floods + 1, sw.Floods);
        Assert.Equal(eGot + 1, e.Received);
        Assert.DoesNotContain(sw.Snapshot(), entry => entry.Port == "d");
    }
}
