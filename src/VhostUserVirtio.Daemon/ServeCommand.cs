using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Backend.Sessions;
using VhostUserVirtio.Group;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// Runs the daemon in the foreground (never daemonises): creates the sockets, logs "ready", waits
/// for SIGINT/SIGTERM, then disconnects the front ends, removes the sockets and returns 0.
/// Exit 2 when what the command line names cannot be used (a socket that cannot be created, an uplink
/// the daemon may not open, CPUs it cannot run on), after undoing whatever was already set up; exit 1
/// when the session keeper it was started under cannot be reached.
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

        IReadOnlyList<int>? cpus = null;
        if (settings.Cpus != null)
        {
            if (CheckCpus(settings.Cpus, out var parsed) is { } problem)
            {
                Console.Error.WriteLine($"vhost-virtio: --cpus {settings.Cpus}: {problem}");
                return 2;
            }
            cpus = parsed;
        }

        if (CheckSocketAccess(settings, out var access) is { } accessProblem)
        {
            Console.Error.WriteLine($"vhost-virtio: {accessProblem}");
            return 2;
        }

        System.Net.IPEndPoint? metricsAt = null;
        if (settings.MetricsListen != null)
        {
            if (MetricsEndpoint.Parse(settings.MetricsListen, out var parsedAt) is { } problem)
            {
                Console.Error.WriteLine($"vhost-virtio: --metrics-listen {settings.MetricsListen}: {problem}");
                return 2;
            }
            metricsAt = parsedAt;
        }

        var logLevel = new LogLevelSwitch(settings.LogLevel);
        using var loggers = LogSetup.CreateLoggers(logLevel, settings.LogFormat);
        var log = loggers.CreateLogger("vhost-virtio");
        var manager = ServiceManager.FromEnvironment(log);

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
        server.SocketAccess = access;
        if (access != null && settings.ClientMode)
            log.LogWarning("--socket-group/--socket-mode do nothing with --client: the front ends create the sockets");
        DeviceGroup? group = null;
        SessionKeeper? sessions = null;
        MetricsEndpoint? metricsEndpoint = null;
        Group.Metrics.GroupMetrics? metrics = null;
        Group.Metrics.PrometheusText? prometheus = null;
        Control.ControlServer? control = null;
        try
        {
            try
            {
                sessions = server.Sessions = SessionKeeper.FromEnvironment(loggers.CreateLogger("VhostUserVirtio.Sessions"));
            }
            catch (Exception e) when (e is Interop.NativeException or IOException or TimeoutException)
            {
                log.LogCritical("cannot reach the session keeper at {Path}: {Error}", Environment.GetEnvironmentVariable(KeeperProtocol.EnvironmentVariable), e.Message);
                return 1;
            }
            if (cpus != null)
            {
                try
                {
                    server.Workers.Pin(cpus);
                }
                catch (Interop.NativeException e)
                {
                    log.LogCritical("cannot pin the workers to CPUs {Cpus}: {Error}", settings.Cpus, e.Message);
                    return 2;
                }
            }
            if (metricsAt != null)
            {
                // Bound before the group's sockets exist, so a taken port fails the start with nothing to undo.
                try
                {
                    metricsEndpoint = MetricsEndpoint.Bind(metricsAt);
                }
                catch (System.Net.Sockets.SocketException e)
                {
                    log.LogCritical("cannot listen for metrics on {Address}: {Error}", settings.MetricsListen, e.Message);
                    return CliValues.Failed;
                }
            }
            group = StartGroup(server, settings, loggers, log);
            if (group == null)
                return CliValues.Failed;
            metrics = new Group.Metrics.GroupMetrics(group);
            if (metricsEndpoint != null)
            {
                prometheus = new Group.Metrics.PrometheusText(metrics.Meter);
                metricsEndpoint.Start(prometheus.Render, log);
                log.LogInformation("metrics: http://{Address}/metrics", metricsEndpoint.LocalEndPoint);
            }
            sessions?.StartRestoredRings();
            LogPlacement(group, log);
            if (settings.ControlSocket != null)
            {
                control = StartControl(settings, group, logLevel, loggers, log);
                if (control == null)
                    return CliValues.Failed;
            }
            log.LogInformation("ready: {Type} group with owner and {Vfs} VF(s), {Pairs} queue pair(s) each, {Workers} worker(s){Mode}; pid {Pid}",
                DeviceCatalog.CapabilityType, settings.Vfs, settings.QueuePairs, settings.Workers,
                settings.ClientMode ? ", client mode" : "", Environment.ProcessId);
            manager.Ready($"serving owner and {settings.Vfs} VF(s) on {(settings.Fd is { } fd ? $"fd {fd}" : settings.SocketPath ?? settings.SocketDirectory)}");

            using (new StatusReporter(() => DeviceCatalog.Describe(group), log, StatusInterval))
                stop.Wait();
            log.LogInformation("{Signal} received: disconnecting front ends{AndSockets}",
                signalName, settings.ClientMode ? "" : " and removing sockets");
            manager.Stopping($"{signalName} received: stopping");
        }
        finally
        {
            metricsEndpoint?.Dispose();
            prometheus?.Dispose();
            metrics?.Dispose();
            control?.Dispose();
            group?.Dispose();
            server.Dispose();
            sessions?.Dispose();
        }
        log.LogInformation("stopped");
        return 0;
    }

    /// <summary>
    /// Parses a --cpus list and checks each CPU is online and one this process may run on (a cpuset
    /// or taskset may have narrowed it). Returns what is wrong, or null.
    /// </summary>
    internal static string? CheckCpus(string text, out IReadOnlyList<int> cpus)
    {
        cpus = [];
        if (Interop.ThreadAffinity.ParseList(text, out var set) is { } syntax)
            return $"not a CPU list ({syntax}); give CPU numbers and ranges such as 1, 0,1 or 2-3";
        var online = Interop.ThreadAffinity.OnlineCpus();
        var offline = online == null ? [] : set.Where(c => !online.Contains(c)).ToList();
        if (offline.Count > 0)
            return $"CPU {string.Join(",", offline)} {(offline.Count == 1 ? "does" : "do")} not exist or {(offline.Count == 1 ? "is" : "are")} offline (online: {File.ReadAllText("/sys/devices/system/cpu/online").Trim()})";
        var allowed = Interop.ThreadAffinity.CurrentThreadCpus();
        var refused = set.Where(c => !allowed.Contains(c)).ToList();
        if (refused.Count > 0)
            return $"CPU {string.Join(",", refused)} {(refused.Count == 1 ? "is" : "are")} outside this process's allowed CPUs ({string.Join(",", allowed)})";
        cpus = set.ToList();
        return null;
    }

    /// <summary>Logs where each worker runs and which queue pairs it serves.</summary>
    private static void LogPlacement(DeviceGroup group, ILogger log)
    {
        foreach (var worker in group.Server.Workers.Workers)
        {
            var served = group.PairsServedBy(worker);
            log.LogInformation("placement: {Worker} (thread {Tid}) on {Cpu}, queue pair(s) {Pairs}{Home}",
                worker.Loop.Name, worker.Loop.Invoke(() => worker.ThreadId), worker.Cpu is { } cpu ? $"CPU {cpu}" : "any CPU",
                served.Count == 0 ? "none" : string.Join(",", served), worker == group.DataPath ? " and the group's control work" : "");
        }
    }

    /// <summary>Opens the control socket; on failure logs why and returns null.</summary>
    private static Control.ControlServer? StartControl(DaemonSettings settings, DeviceGroup group, LogLevelSwitch logLevel, ILoggerFactory loggers, ILogger log)
    {
        var info = new Control.DaemonInfo(Environment.ProcessId, Control.ControlClient.Version, new DateTimeOffset(System.Diagnostics.Process.GetCurrentProcess().StartTime.ToUniversalTime()), settings.SocketDirectory,
            group.Server.Workers.Workers.Select(w => new Control.WorkerInfo(w.Loop.Name, w.Cpu, group.PairsServedBy(w))).ToList());
        var controlLog = loggers.CreateLogger("VhostUserVirtio.Control");
        var commands = new Control.ControlCommands(group.Status, logLevel, info, controlLog);
        try
        {
            var control = Control.ControlServer.Listen(settings.ControlSocket!, commands, new Control.ControlLimits(), controlLog);
            log.LogInformation("control socket: {Path}", control.Path);
            return control;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            log.LogCritical("cannot open the control socket {Path}: {Error} (--control-socket none runs without one)", settings.ControlSocket, e.Message);
            return null;
        }
    }

    /// <summary>The --socket-group/--socket-mode pair as one <see cref="Interop.SocketAccess"/>, or why it is wrong (one line).</summary>
    private static string? CheckSocketAccess(DaemonSettings settings, out Interop.SocketAccess? access)
    {
        access = null;
        if (settings.SocketMode is { } mode && Refusal(() => Interop.SocketAccess.ParseMode(mode)) is { } badMode)
            return $"--socket-mode {mode}: {badMode}";
        if (settings.SocketGroup is { } group && Refusal(() => Interop.SocketAccess.LookUpGroup(group)) is { } badGroup)
            return $"--socket-group {group}: {badGroup}";
        access = Interop.SocketAccess.Parse(settings.SocketGroup, settings.SocketMode);
        return null;

        static string? Refusal(Func<uint> parse)
        {
            try
            {
                parse();
                return null;
            }
            catch (ArgumentException e)
            {
                return e.Message;
            }
        }
    }

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
