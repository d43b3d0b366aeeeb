using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Group;

namespace VhostUserVirtio.Tests.Support;

/// <summary>A virtio-net device group served in-process from a private temp folder, with captured logs.</summary>
public sealed class GroupBackend : IDisposable
{
    /// <param name="directory">Socket folder; a fresh temp folder when null. A given folder is not deleted on dispose.</param>
    /// <param name="memoryPolicy">What guest memory front ends may hand over (DPDK's needs AllowUnsealed); the default when null.</param>
    /// <param name="workers">Data-path workers of the server (the group spreads its queue pairs over them).</param>
    public GroupBackend(int vfs = 2, Func<DeviceGroupOptions, DeviceGroupOptions>? configure = null, string? directory = null,
        Memory.MemoryPolicy? memoryPolicy = null, int workers = 1)
    {
        _ownsDirectory = directory == null;
        Directory = directory ?? Path.Combine(Path.GetTempPath(), "vuvg-" + Guid.NewGuid().ToString("N")[..12]);
        Logs = new CapturingLoggerProvider();
        Loggers = LoggerFactory.Create(b => b.AddProvider(Logs).SetMinimumLevel(LogLevel.Debug));
        Server = new VhostUserServer(Loggers, workers, memoryPolicy: memoryPolicy);
        var options = new DeviceGroupOptions { SocketDirectory = Directory, Vfs = vfs };
        Group = new DeviceGroup(Server, configure?.Invoke(options) ?? options, Loggers);
        try
        {
            Group.Start();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private readonly bool _ownsDirectory;

    public string Directory { get; }
    public CapturingLoggerProvider Logs { get; }
    public ILoggerFactory Loggers { get; }
    public VhostUserServer Server { get; }
    public DeviceGroup Group { get; }

    public string Socket(int member) => Path.Combine(Directory, GroupMember.SocketFileName(member));

    public GroupMember Member(int id) => id == 0 ? Group.Owner! : Group.Members[id - 1];

    public void Dispose()
    {
        Group.Dispose();
        Server.Dispose();
        Loggers.Dispose();
        if (_ownsDirectory)
            try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { }
    }
}
