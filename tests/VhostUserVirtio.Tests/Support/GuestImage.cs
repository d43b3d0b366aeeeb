using System.Diagnostics;
using System.Text;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// The guest kernel and base initramfs built by scripts/guest/prepare.sh into .cache/guest/.
/// <see cref="Ensure"/> runs the script once per test process (it is idempotent and quick when
/// everything is cached) and returns the paths it prints.
/// </summary>
public sealed record GuestImage(string Kernel, string Initramfs)
{
    /// <summary>The tools archive (iperf3), appended to a guest's initrd on request; null if the script built none.</summary>
    public string? Tools { get; init; }

    private static readonly TimeSpan PrepareTimeout = TimeSpan.FromMinutes(30);

    // ExecutionAndPublication: one run even when several test classes start guests at once; a
    // failure is cached too, so every guest test reports the same script output instead of retrying.
    private static readonly Lazy<GuestImage> Prepared = new(Prepare, LazyThreadSafetyMode.ExecutionAndPublication);

    public static GuestImage Ensure() => Prepared.Value;

    /// <summary>The folder holding VhostUserVirtio.sln, found by walking up from the test assembly.</summary>
    public static string RepositoryRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "VhostUserVirtio.sln")))
                    return dir.FullName;
            }
            throw new InvalidOperationException($"no VhostUserVirtio.sln above {AppContext.BaseDirectory}");
        }
    }

    private static GuestImage Prepare()
    {
        var root = RepositoryRoot;
        var script = Path.Combine(root, "scripts", "guest", "prepare.sh");
        var info = new ProcessStartInfo("bash")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = root,
        };
        info.ArgumentList.Add(script);
        var output = new StringBuilder();
        using var process = new Process { StartInfo = info };
        process.OutputDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        process.StandardInput.Close();
        if (!process.WaitForExit(PrepareTimeout))
        {
            try { process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            process.WaitForExit();
            throw new InvalidOperationException($"{script} did not finish within {PrepareTimeout}:\n{Text(output)}");
        }
        process.WaitForExit(); // drains the output readers
        var text = Text(output);
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"{script} failed with exit code {process.ExitCode}:\n{text}");

        string? Value(string key) => text.Split('\n').Select(l => l.TrimEnd('\r'))
            .LastOrDefault(l => l.StartsWith(key + "=", StringComparison.Ordinal))?[(key.Length + 1)..];
        var kernel = Value("GUEST-KERNEL");
        var initramfs = Value("GUEST-INITRAMFS");
        if (kernel == null || initramfs == null || !File.Exists(kernel) || !File.Exists(initramfs))
            throw new InvalidOperationException($"{script} did not report an existing kernel and initramfs:\n{text}");
        var tools = Value("GUEST-TOOLS");
        return new GuestImage(kernel, initramfs) { Tools = tools != null && File.Exists(tools) ? tools : null };
    }

    private static string Text(StringBuilder output)
    {
        lock (output)
            return output.ToString();
    }
}
