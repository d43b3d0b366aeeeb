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
        int code;
        (code, output) = ChildProcess.Run(command[0], command.Skip(1), TimeSpan.FromSeconds(30));
        return code == 0;
    }

    public void Dispose() => TryExec(["ip", "netns", "del", Name], out _);
}
