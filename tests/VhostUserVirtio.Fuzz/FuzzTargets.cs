namespace VhostUserVirtio.Fuzz;

/// <summary>A fuzz target: decodes any input into work for one input surface; throws only on a real bug.</summary>
public delegate void FuzzTarget(ReadOnlySpan<byte> input);

/// <summary>The targets by name (scripts/fuzz.sh, the regression replay).</summary>
public static class FuzzTargets
{
    public static readonly IReadOnlyDictionary<string, FuzzTarget> All = new Dictionary<string, FuzzTarget>
    {
        ["message"] = MessageTarget.Run,
        ["split-ring"] = RingTarget.RunSplit,
        ["packed-ring"] = RingTarget.RunPacked,
        ["admin"] = AdminTarget.Run,
        ["transport"] = TransportTarget.Run,
        ["net-tx"] = NetTxTarget.Run,
    };
}
