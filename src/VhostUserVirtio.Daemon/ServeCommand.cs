using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Interop;

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

        var server = new VhostUserServer(loggers, settings.Workers);
        try
        {
            if (!StartEndpoints(server, settings, log))
                return 1;
            log.LogInformation("ready: {Count} {Type} device(s), {Queues} queue(s) each, {Workers} worker(s){Mode}; pid {Pid}",
                server.Endpoints.Count, DeviceCatalog.CapabilityType, settings.Queues, settings.Workers,
                settings.ClientMode ? ", client mode" : "", Environment.ProcessId);

            using (new StatusReporter(server, log, StatusInterval))
                stop.Wait();
            log.LogInformation("{Signal} received: disconnecting front ends{AndSockets}",
                signalName, settings.ClientMode ? "" : " and removing sockets");
        }
        finally
        {
            server.Dispose();
        }
        log.LogInformation("stopped");
        return 0;
    }

    private static ILoggerFactory CreateLoggers(LogLevel level) =>
        LoggerFactory.Create(b => b
            .SetMinimumLevel(level)
            .AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace) // all logs on stderr; stdout is for output
            .AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.TimestampFormat = "yyyy-MM-dd HH:mm:ss.fff ";
                o.ColorBehavior = LoggerColorBehavior.Disabled;
            }));

    /// <summary>Creates every endpoint; on the first failure logs why and returns false (the caller disposes the rest).</summary>
    private static bool StartEndpoints(VhostUserServer server, DaemonSettings settings, ILogger log)
    {
        string where = settings.Fd is { } n ? $"fd {n}" : settings.SocketPath ?? settings.SocketDirectory;
        try
        {
            if (settings.Fd is { } fd)
            {
                var listener = UnixSocket.AdoptListener(fd);
                server.Serve(DeviceCatalog.Create(0, settings.Queues), listener, where);
                return true;
            }
            if (settings.SocketPath == null && !settings.ClientMode)
                Directory.CreateDirectory(settings.SocketDirectory);
            for (int i = 0; i < settings.Devices; i++)
            {
                var device = DeviceCatalog.Create(i, settings.Queues);
                where = settings.SocketPath ?? Path.Combine(settings.SocketDirectory, DeviceCatalog.SocketFileName(device));
                if (!settings.ClientMode && IsInUse(where))
                {
                    log.LogCritical("cannot create socket {Path}: another back end is listening on it", where);
                    return false;
                }
                server.Serve(device, where, settings.ClientMode); // the endpoint logs its socket path
            }
            return true;
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
        {
            log.LogCritical("cannot create socket {Path}: {Error}", where, e.Message);
            return false;
        }
    }

    /// <summary>
    /// True when something accepts connections on <paramref name="path"/>. Listening would silently
    /// replace that socket file (and our shutdown would later delete it), so refuse instead.
    /// </summary>
    private static bool IsInUse(string path)
    {
        if (!File.Exists(path))
            return false;
        try
        {
            using var probe = UnixSocket.Connect(path);
            return true;
        }
        catch (NativeException)
        {
            return false; // a stale file from a back end that died; Listen replaces it
        }
    }
}
