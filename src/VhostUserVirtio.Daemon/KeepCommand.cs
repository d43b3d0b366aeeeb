using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Sessions;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// `vhost-virtio keep -- serve …`: runs the daemon as a child and restarts it whenever it dies
/// (SIGKILL, a crash) while holding, in this small process, every descriptor the daemon hands over:
/// its listening sockets, its front ends' connections, their guest memory, eventfds and a record of
/// each session (<see cref="DescriptorStore"/>). The restarted daemon takes them back and resumes
/// every session, so front ends never see a disconnect and guests lose no packets. SIGINT/SIGTERM
/// stop the daemon cleanly (passed on) and then the keeper; a daemon that exits 0 by itself ends it too.
/// </summary>
internal static class KeepCommand
{
    /// <summary>A daemon that dies sooner than this after its start is crash-looping: restarts back off.</summary>
    private static readonly TimeSpan HealthyRun = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan FirstBackOff = TimeSpan.FromMilliseconds(100), MaxBackOff = TimeSpan.FromSeconds(5);

    /// <param name="root">The whole command line's parser: the daemon's own command line is checked with it before anything starts.</param>
    public static Command Create(RootCommand root)
    {
        var command = new Argument<string[]>("command")
        {
            Description = "The daemon's command line after --, e.g. -- serve --vfs 2 (default: serve).",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var keep = new Command("keep", "Run the daemon under a session keeper: restarted whenever it dies, its front ends' sessions resume without a disconnect.");
        keep.Arguments.Add(command);
        keep.Validators.Add(r =>
        {
            foreach (var error in root.Parse(ChildArgs(r.GetValue(command))).Errors)
                r.AddError("the daemon's command line: " + error.Message);
        });
        keep.SetAction(r => Run(ChildArgs(r.GetValue(command))));
        return keep;
    }

    private static string[] ChildArgs(string[]? args) => args is { Length: > 0 } ? args : ["serve"];

    private static int Run(string[] childArgs)
    {
        using var loggers = LoggerFactory.Create(b => b.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-dd HH:mm:ss.fff ";
            o.ColorBehavior = Microsoft.Extensions.Logging.Console.LoggerColorBehavior.Disabled;
        }).AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace));
        var log = loggers.CreateLogger("vhost-virtio keep");

        using var store = new DescriptorStore(log);
        Process? child = null;
        int stopSignal = 0;
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            stopSignal = context.Signal == PosixSignal.SIGINT ? ProcessSignal.SigInt : ProcessSignal.SigTerm;
            if (Volatile.Read(ref child) is { } running)
                try { ProcessSignal.Send(running.Id, stopSignal); } catch (NativeException) { }
        }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);

        var backOff = TimeSpan.Zero;
        for (int start = 1; ; start++)
        {
            var info = new ProcessStartInfo(Environment.ProcessPath!) { UseShellExecute = false };
            // Run as `dotnet vhost-virtio.dll`: the child is started the same way.
            if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
                info.ArgumentList.Add(typeof(KeepCommand).Assembly.Location);
            foreach (var a in childArgs)
                info.ArgumentList.Add(a);
            info.Environment[KeeperProtocol.EnvironmentVariable] = store.Path;
            store.Authorized = DescriptorStore.Pending;
            var started = Stopwatch.StartNew();
            var process = Process.Start(info)!;
            store.Authorized = process.Id;
            Volatile.Write(ref child, process);
            log.LogInformation("daemon started (pid {Pid}, start {Start}), {Kept} descriptor(s) kept for it", process.Id, start, store.Count);
            if (stopSignal != 0)
                ProcessSignal.Send(process.Id, stopSignal);
            int pid = process.Id;
            process.WaitForExit();
            int code = process.ExitCode;
            Volatile.Write(ref child, null);
            process.Dispose();
            if (stopSignal != 0 || code == 0)
            {
                log.LogInformation("daemon exited with {Code}{Why}; closing {Kept} kept descriptor(s)", code,
                    stopSignal != 0 ? " after the stop signal" : " by itself", store.Count);
                return code;
            }
            // A first start that fails this way (its sockets, uplink or CPUs unusable) fails the same way
            // again; later ones keep being retried, as the sessions kept for them are worth waiting for.
            if (start == 1 && code == CliValues.Failed)
            {
                log.LogError("daemon could not start (exit {Code}); not restarting it", code);
                return code;
            }
            backOff = started.Elapsed >= HealthyRun ? TimeSpan.Zero
                : backOff == TimeSpan.Zero ? FirstBackOff : TimeSpan.FromTicks(Math.Min(backOff.Ticks * 2, MaxBackOff.Ticks));
            log.LogWarning("daemon (pid {Pid}) died after {Ran:0.000} s ({How}); restarting{Delay}, keeping {Kept} descriptor(s) for it",
                pid, started.Elapsed.TotalSeconds,
                code > 128 ? $"signal {code - 128}" : $"exit code {code}", backOff > TimeSpan.Zero ? $" in {backOff.TotalMilliseconds:0} ms" : "", store.Count);
            if (backOff > TimeSpan.Zero)
                Thread.Sleep(backOff);
        }
    }
}
