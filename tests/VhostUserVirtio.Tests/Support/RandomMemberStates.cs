using System.Collections.Immutable;
using System.Numerics;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Group.Migration;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// Random member states and device shapes from a seeded <see cref="Random"/>, for property tests that
/// print their seed: every field a device parts stream carries takes values across its whole valid
/// range (MACs, full and empty tables, modes, link, trust, vectors, counters, queue configurations).
/// </summary>
public static class RandomMemberStates
{
    /// <summary>The seed from DEVICE_PARTS_SEED, or a new one; a failing test prints it so the run can be replayed.</summary>
    public static int Seed() =>
        int.TryParse(Environment.GetEnvironmentVariable("DEVICE_PARTS_SEED"), out int given) ? given : Random.Shared.Next();

    /// <summary>Runs <paramref name="body"/> <paramref name="iterations"/> times on one seeded generator; a failure names the seed and the iteration.</summary>
    public static void Run(int iterations, Action<Random, int> body)
    {
        int seed = Seed();
        var rng = new Random(seed);
        for (int i = 0; i < iterations; i++)
        {
            try
            {
                body(rng, i);
            }
            catch (Exception e)
            {
                throw new Xunit.Sdk.XunitException($"iteration {i} of seed {seed} (replay: DEVICE_PARTS_SEED={seed}): {e.Message}", e);
            }
        }
    }

    public static NetMemberShape Shape(Random rng)
    {
        int pairs = rng.Next(1, 5);
        bool control = rng.Next(2) == 0;
        return new NetMemberShape((ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 63), 2 * pairs + (control ? 1 : 0), pairs,
            1 << rng.Next(4, 16), MaxMsixVectors: 64);
    }

    public static Mac AnyMac(Random rng) => new((ulong)rng.NextInt64(0, 1L << 48));

    /// <summary>A MAC a device may have: unicast, not zero.</summary>
    public static Mac OwnMac(Random rng) => new(((ulong)rng.NextInt64(0, 1L << 48) & ~0x0100_0000_0000UL) | 0x0200_0000_0000UL);

    /// <param name="maxMsix">The most MSI-X vectors the state may assign (the member's pool share).</param>
    /// <param name="withMac">Whether the device has a MAC (then the state carries one).</param>
    public static NetMemberState State(Random rng, NetMemberShape shape, int maxMsix, bool withMac)
    {
        ushort msix = (ushort)rng.Next(1, Math.Min(maxMsix, shape.MaxMsixVectors) + 1);
        var queues = new VirtqueueState[shape.QueueCount];
        for (int i = 0; i < queues.Length; i++)
            queues[i] = Queue(rng, shape, msix);
        var drops = new long[MemberCounters.DropReasons];
        for (int r = 0; r < drops.Length; r++)
            drops[r] = Counter(rng);
        return new NetMemberState
        {
            DeviceFeatures = shape.DeviceFeatures,
            DriverFeatures = (ulong)rng.NextInt64() & shape.DeviceFeatures,
            ConfigVector = Vector(rng, msix),
            Status = (byte)(rng.Next(256) & ~0x30),
            Queues = [.. queues],
            Mac = withMac ? OwnMac(rng) : null,
            UnicastTable = Table(rng),
            MulticastTable = Table(rng),
            Modes = new ReceiveModes(Bit(rng), Bit(rng), Bit(rng), Bit(rng), Bit(rng), Bit(rng)),
            ActivePairs = (ushort)rng.Next(1, shape.QueuePairs + 1),
            LinkUp = Bit(rng),
            Trusted = Bit(rng),
            MsixVectors = msix,
            Counters = new MemberCounters(Counter(rng), Counter(rng), Counter(rng), Counter(rng), Counter(rng), [.. drops]),
        };
    }

    private static VirtqueueState Queue(Random rng, NetMemberShape shape, ushort msix)
    {
        if (rng.Next(5) == 0)
            return VirtqueueState.Unused with { Vector = Vector(rng, msix) };
        int maxLog = 31 - BitOperations.LeadingZeroCount((uint)shape.MaxQueueSize);
        return new VirtqueueState((ushort)(1 << rng.Next(0, maxLog + 1)), Vector(rng, msix), Bit(rng),
            (ulong)rng.NextInt64() & ~15UL, (ulong)rng.NextInt64() & ~1UL, (ulong)rng.NextInt64() & ~3UL);
    }

    private static ushort Vector(Random rng, ushort msix) => rng.Next(4) == 0 ? DeviceParts.NoVector : (ushort)rng.Next(msix);

    /// <summary>Empty, full, or anything between, each often.</summary>
    private static ImmutableArray<Mac> Table(Random rng)
    {
        int n = rng.Next(4) switch { 0 => 0, 1 => DevicePartsWriter.MaxTableEntries, _ => rng.Next(DevicePartsWriter.MaxTableEntries + 1) };
        var macs = new Mac[n];
        for (int i = 0; i < n; i++)
            macs[i] = AnyMac(rng);
        return [.. macs];
    }

    /// <summary>0, small, or up to 2^63 - 1.</summary>
    private static long Counter(Random rng) => rng.Next(3) switch { 0 => 0, 1 => rng.Next(1000), _ => rng.NextInt64(0, long.MaxValue) + (rng.Next(2) == 0 ? 0 : 1) };

    private static bool Bit(Random rng) => rng.Next(2) == 0;
}
