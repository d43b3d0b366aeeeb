using VhostUserVirtio.Backend;
using VhostUserVirtio.Group;

namespace VhostUserVirtio.Fuzz;

/// <summary>
/// A device group served in-process for the admin and transport targets: an owner with an admin
/// queue and a transport queue, <see cref="Vfs"/> VFs, sockets in a private temp folder (deleted at
/// exit). Made once per process; commands run on the group's data-path worker, as the owner's
/// queues do.
/// </summary>
public sealed class GroupRig
{
    public const int Vfs = 3, ManagedDevices = 4;

    private static readonly Lazy<GroupRig> Shared = new(() => new GroupRig());
    public static GroupRig Instance => Shared.Value;

    [ThreadStatic] private static CommandChains? t_chains;
    public static CommandChains Chains => t_chains ??= new CommandChains();

    private GroupRig()
    {
        Directory = Path.Combine(Path.GetTempPath(), "vuv-fuzz-" + Environment.ProcessId);
        System.IO.Directory.CreateDirectory(Directory);
        var loggers = FormattingLoggerProvider.Factory;
        Server = new VhostUserServer(loggers, 1);
        Group = new DeviceGroup(Server, new DeviceGroupOptions { SocketDirectory = Directory, Vfs = Vfs, MaxManagedDevices = ManagedDevices }, loggers);
        Group.Start();
        Owner = (OwnerDevice)Group.Owner!.Endpoint.Backend.Device;
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { }
        };
    }

    public string Directory { get; }
    public VhostUserServer Server { get; }
    public DeviceGroup Group { get; }
    public OwnerDevice Owner { get; }

    /// <summary>Runs <paramref name="work"/> on the group's data-path worker (exceptions come back here).</summary>
    public T OnDataPath<T>(Func<T> work) => Group.DataPath.Loop.Invoke(work);

    /// <summary>
    /// Waits until the work a command handed to the control loop (serving or closing a socket) has run,
    /// so no instrumented code runs on another thread while the next command does and coverage follows
    /// the input. Work handed to the data path needs no wait: the next command runs there after it.
    /// </summary>
    public void Settle() => Server.Control.Invoke(() => { });
}
