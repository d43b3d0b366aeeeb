using System.Diagnostics;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// A network namespace of the test's own (ip netns), so daemons, TAP devices and a bridge can carry
/// traffic that never leaves it. Disposing deletes it with everything left inside.
/// </summary>
public sealed class NetNamespace : IDisposable
{
    private NetNamespace(string name) => Name = name;

    public string Name { get; }

    /// <summary>The words that run a command inside the namespace (a launcher for <see cref="DaemonProcess.Start"/>).</summary>
    public IReadOnlyList<string> Launcher => ["ip", "netns", "exec", Name];

    public static NetNamespace Create(string prefix)
    {
        var ns = new NetNamespace(prefix + Guid.NewGuid().ToString("N")[..8]);
        Ip("netns", "add", ns.Name);
        try
        {
            ns.Run("ip", "link", "set", "lo", "up");
        }
        catch
        {
            ns.Dispose();
            throw;
        }
        return ns;
    }

    /// <summary>Runs a command inside the namespace; fails the test if it fails.</summary>
    public string Run(params string[] command) => Exec(["ip", "netns", "exec", Name, .. command]);

    /// <summary>Runs a command inside the namespace; returns whether it succeeded.</summary>
    public bool TryRun(params string[] command) => TryExec(["ip", "netns", "exec", Name, .. command], out _);

    private static void Ip(params string[] args) => Exec(["ip", .. args]);

    private static string Exec(string[] command)
    {
        Assert.True(TryExec(command, out var output), $"`{string.Join(' ', command)}` failed: {output}");
        return output;
    }

    private static bool TryExec(string[] command, out string output)
    {
        var info = new ProcessStartInfo(command[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in command.Skip(1))
            info.ArgumentList.Add(a);
        using var p = new Process { StartInfo = info };
        var stderr = new System.Text.StringBuilder();
        p.ErrorDataReceived += (_, e) => { lock (stderr) stderr.AppendLine(e.Data); };
        p.Start();
        p.BeginErrorReadLine();
        var stdout = p.StandardOutput.ReadToEnd(); // ip prints little; it ends when ip exits
        if (!p.WaitForExit(30_000))
        {
            p.Kill(entireProcessTree: true);
            output = "timed out";
            return false;
        }
        p.WaitForExit();
        lock (stderr)
            output = stdout + stderr;
        return p.ExitCode == 0;
    }

    public void Dispose() => TryExec(["ip", "netns", "del", Name], out _);
}
