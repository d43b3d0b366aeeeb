using System.Diagnostics;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// scripts/install.sh run once for a test class (publishing takes from seconds, warm, to minutes
/// on a fresh clone): into a temporary prefix with the unit, and a second time as a packager would,
/// for /usr/local under a staging root (--destdir) without the unit. Removed afterwards.
/// </summary>
public sealed class InstalledService : IDisposable
{
    private static readonly TimeSpan InstallDeadline = TimeSpan.FromMinutes(20);

    public InstalledService()
    {
        Root = Directory.CreateTempSubdirectory("vuv-install-").FullName;
        Prefix = Path.Combine(Root, "usr");
        StagingRoot = Path.Combine(Root, "stage");
        InstallOutput = RunInstall("--prefix", Prefix);
        StagedOutput = RunInstall("--prefix", "/usr/local", "--destdir", StagingRoot, "--no-systemd");
    }

    /// <summary>The folder holding both installs.</summary>
    public string Root { get; }

    /// <summary>The --prefix of the first install, as its unit and descriptor name it.</summary>
    public string Prefix { get; }

    /// <summary>The --destdir of the second install (prefix /usr/local, no unit).</summary>
    public string StagingRoot { get; }

    public string InstallOutput { get; }
    public string StagedOutput { get; }

    public string Binary => Path.Combine(Prefix, "bin", "vhost-virtio");
    public string Descriptor => Path.Combine(Prefix, "share", "qemu", "vhost-user", "50-vhost-virtio.json");
    public string Unit => Path.Combine(Prefix, "lib", "systemd", "system", "vhost-virtio.service");

    /// <summary>Runs scripts/install.sh; a failure (e.g. NuGet unreachable for the runtime pack) fails every test with its output.</summary>
    public static string RunInstall(params string[] args)
    {
        var result = Run("bash", [Path.Combine(TestPmd.RepositoryRoot(), "scripts", "install.sh"), .. args], InstallDeadline);
        if (result.ExitCode != 0)
            throw new InvalidOperationException($"scripts/install.sh {string.Join(' ', args)} exited {result.ExitCode}:\n{result.Output}");
        return result.Output;
    }

    /// <summary>Runs a program to completion with stdin empty; stdout and stderr together (<see cref="ChildProcess.Run"/>).</summary>
    public static (int ExitCode, string Output) Run(string program, IEnumerable<string> args, TimeSpan deadline) =>
        ChildProcess.Run(program, args, deadline);

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); } catch (IOException) { }
    }
}
