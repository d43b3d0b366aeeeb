using VhostUserVirtio.Fuzz;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Replays the fuzzing corpus through the uninstrumented targets (docs/fuzzing.md): every seed and
/// every input the fuzzer ever crashed or hung on (tests/VhostUserVirtio.Fuzz/Regressions/TARGET/,
/// copied next to the tests) must now run to the end without an exception.
/// </summary>
[Trait("tier", "unit")]
public sealed class FuzzRegressionTests
{
    private static readonly string Kept = Path.Combine(AppContext.BaseDirectory, "FuzzRegressions");

    public static TheoryData<string, string> Inputs()
    {
        var data = new TheoryData<string, string>();
        foreach (var target in FuzzTargets.All.Keys)
        {
            foreach (var (name, _) in Seeds.For(target))
                data.Add(target, "seed " + name);
            var folder = Path.Combine(Kept, target);
            if (Directory.Exists(folder))
                foreach (var file in Directory.GetFiles(folder).Order())
                    data.Add(target, Path.GetFileName(file));
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Inputs))]
    public void Every_seed_and_kept_fuzz_finding_runs_through_its_target_without_an_exception(string target, string input)
    {
        byte[] bytes = input.StartsWith("seed ", StringComparison.Ordinal)
            ? Seeds.For(target).Single(s => s.Name == input["seed ".Length..]).Bytes
            : File.ReadAllBytes(Path.Combine(Kept, target, input));
        FuzzTargets.All[target](bytes);
    }
}
