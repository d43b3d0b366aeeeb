using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Group;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// Runs the daemon in the foreground (never daemonises): creates the sockets, logs "ready", waits
/// for SIGINT/SIGTERM, then disconnects the front ends, removes the sockets and returns 0.
/// Exit 1 when a socket cannot be created, after undoing whatever was already set up.
/// </summary>
internal static class ServeCommand
{
    private static readonly TimeSpan StatusInterval = TimeSpan.FromSeconds(10);

    public static int Execute(DaemonSettings settings)
    {
        if (settings.PrintCapabilities)
        {
            // stdout carries only the document (logs go to stderr), so a caller can parse it as is.
            Console.Out.WriteLine(Capabilities.Document());
            return 0;
        }

        using var loggers = CreateLoggers(settings.LogLevel);
        var log = loggers.CreateLogger("vhost-virtio");

        using var stop = new ManualResetEventSlim();
        string? signalName = null;
        void OnSignal(PosixSignalContext context)
        {
            // The first signal asks for a clean stop; a second one while stopping falls through to
            // the default action, so an operator can still kill a stuck shutdown with another Ctrl-C.
            context.Cancel = !stop.IsSet;
            signalName ??= context.Signal.ToString();
            stop.Set();
        }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);

        if (settings.Memory.AllowUnsealed)
            log.LogWarning("unsealed guest memory allowed (--allow-unsealed-memory): a front end that truncates its memory file crashes the daemon; serve only trusted front ends");
        var server = new VhostUserServer(loggers, settings.Workers, TimeSpan.FromMicroseconds(settings.PollMicroseconds), settings.Memory);
        DeviceGroup? group = null;
        try
        {
            group = StartGroup(server, settings, loggers, log);
            if (group == null)
                return 1;
            log.LogInformation("ready: {Type} group with owner and {Vfs} VF(s), {Pairs} queue pair(s) each, {Workers} worker(s){Mode}; pid {Pid}",
                DeviceCatalog.CapabilityType, settings.Vfs, settings.QueuePairs, settings.Workers,
                settings.ClientMode ? ", client mode" : "", Environment.ProcessId);

            using (new StatusReporter(() => DeviceCatalog.Describe(group), log, StatusInterval))
                stop.Wait();
            log.LogInformation("{Signal} received: disconnecting front ends{AndSockets}",
                signalName, settings.ClientMode ? "" : " and removing sockets");
        }
        finally
        {
            group?.Dispose();
            server.Dispose();
        }
        log.LogInformation("stopped");
        return 0;
    }

    private static ILoggerFactory CreateLoggers(LogLevel level) =>
        LoggerFactory.Create(b => b
            .SetMinimumLevel(level)
            .AddConsole(o =>
            {
                o.LogToStandardErrorThreshold = LogLevel.Trace; // all logs on stderr; stdout is for output
                // A full log queue drops lines instead of blocking the thread that logs (the control
                // loop, a worker): a slow reader of stderr must not stall the daemon.
                o.QueueFullMode = ConsoleLoggerQueueFullMode.DropWrite;
            })
            .AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.TimestampFormat = "yyyy-MM-dd HH:mm:ss.fff ";
                o.ColorBehavior = LoggerColorBehavior.Disabled;
            }));

    /// <summary>Creates the group's sockets; on failure logs why and returns null (the group undid what it made).</summary>
    private static DeviceGroup? StartGroup(VhostUserServer server, DaemonSettings settings, ILoggerFactory loggers, ILogger log)
    {
        try
        {
            var group = new DeviceGroup(server, DeviceCatalog.GroupOptions(settings), loggers);
            group.Start();
            return group;
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
        {
            string where = settings.Fd is { } n ? $"fd {n}" : settings.SocketPath ?? settings.SocketDirectory;
            log.LogCritical("cannot serve on {Where}: {Error}", where, e.Message);
            return null;
        }
    }
}
