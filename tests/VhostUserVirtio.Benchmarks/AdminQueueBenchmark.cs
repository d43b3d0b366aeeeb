using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Microsoft.Extensions.Logging.Abstractions;
using VhostUserVirtio.Backend;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Benchmarks;

/// <summary>
/// The owner's admin queue over a real vhost-user socket, in-process: one legacy register read
/// (LEGACY_COMMON_CFG_READ of the ISR, as virtio-vfio-pci issues one per guest BAR access) and one
/// legacy frame sent by a VF driven only through legacy commands (queue notify through the admin
/// queue, or through the VF's doorbell). Times include the owner driver's own work and its waits on
/// the call descriptor; the allocation column is process-wide and is the driver library's (the
/// device side allocates nothing per command: LegacyInterfaceTests).
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Throughput, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class AdminQueueBenchmark
{
    private string _directory = null!;
    private VhostUserServer _server = null!;
    private DeviceGroup _group = null!;
    private OwnerDriver _owner = null!;
    private LegacyNetDriver _legacy = null!;
    private LegacyNetDriver _legacyDoorbell = null!;
    private readonly byte[] _frame = new byte[60];

    [GlobalSetup]
    public void Setup()
    {
        _directory = Path.Combine(Path.GetTempPath(), "vuv-bench-admin-" + Guid.NewGuid().ToString("N")[..12]);
        _server = new VhostUserServer(NullLoggerFactory.Instance);
        _group = new DeviceGroup(_server, new DeviceGroupOptions { SocketDirectory = _directory, Vfs = 2 }, NullLoggerFactory.Instance);
        _group.Start();
        _owner = OwnerDriver.Connect(Path.Combine(_directory, "pf.sock"));
        _owner.UseAllCommands();
        _legacy = LegacyNetDriver.Start(_owner.Admin, 1, Path.Combine(_directory, "vf1.sock"));
        _legacyDoorbell = LegacyNetDriver.Start(_owner.Admin, 2, Path.Combine(_directory, "vf2.sock"), doorbells: true);
        Array.Fill(_frame, (byte)0xff, 0, 6); // broadcast: both VFs flood to each other and the owner
    }

    [Benchmark]
    public uint LegacyRegisterRead() => _legacy.Registers.ReadCommon(LegacyLayout.IsrStatus, 1);

    [Benchmark]
    public void LegacySendNotifyThroughAdminQueue() => _legacy.Send(_frame);

    [Benchmark]
    public void LegacySendNotifyThroughDoorbell() => _legacyDoorbell.Send(_frame);

    [GlobalCleanup]
    public void Cleanup()
    {
        _legacyDoorbell.Dispose();
        _legacy.Dispose();
        _owner.Dispose();
        _group.Dispose();
        _server.Dispose();
        try { Directory.Delete(_directory, recursive: true); } catch (IOException) { }
    }
}
