using System.Diagnostics;
using System.Text;

namespace VhostUserVirtio.Tests.Support;

/// <summary>Runs a helper program (ip, virsh, install.sh, systemd-analyze ...) to completion for a test.</summary>
public static class ChildProcess
{
    /// <summary>
    /// Runs <paramref name="program"/> with stdin empty and returns its exit code and stdout and stderr
    /// together; killed (exit -1) when it outlives <paramref name="timeout"/>, exit -1 too when it cannot start.
    /// </summary>
    public static (int ExitCode, string Output) Run(string program, IEnumerable<string> args, TimeSpan timeout)
    {
        var info = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
            info.ArgumentList.Add(a);
        // `dotnet test` leaves MSBuild's own variables set; a nested build must find its SDK afresh.
        foreach (var name in info.Environment.Keys.Where(k => k.StartsWith("MSBUILD", StringComparison.OrdinalIgnoreCase)).ToList())
            info.Environment.Remove(name);
        var output = new StringBuilder();
        using var process = new Process { StartInfo = info };
        process.OutputDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        try
        {
            process.Start();
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (-1, $"{program}: {e.Message}");
        }
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        process.StandardInput.Close();
        if (!process.WaitForExit(timeout))
        {
            try { process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            process.WaitForExit();
            lock (output)
                return (-1, $"{program} {string.Join(' ', args)}: timed out after {timeout.TotalSeconds:F0} s\n{output}");
        }
        process.WaitForExit();
        lock (output)
            return (process.ExitCode, output.ToString());
    }
}
