namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// A vhost-user back end with two network ports that joins them (a wire or a learning switch), for
/// tests that put DPDK virtio-user front ends on both ports. Port 0 and port 1 are the sockets the
/// two front ends connect to.
/// </summary>
public interface IVhostSwitch : IDisposable
{
    string Name { get; }
    string Socket(int port);
    /// <summary>Called once the front ends are attached: wait for links and begin forwarding.</summary>
    void StartForwarding();
    /// <summary>Called before the counters are read.</summary>
    void StopForwarding();
}

public static class VhostSwitches
{
    /// <summary>Names for [MemberData]: DPDK's vhost PMD, our daemon as a process, and our group in-process (exact counters).</summary>
    public static TheoryData<string> Names => new() { "dpdk-vhost", "ours", "ours-in-process" };

    public static IVhostSwitch Create(string name, string directory) => name switch
    {
        "dpdk-vhost" => new DpdkVhostSwitch(directory),
        "ours" => new DaemonSwitch(directory),
        "ours-in-process" => new InProcessGroupSwitch(directory),
        _ => throw new ArgumentException("unknown back end " + name, nameof(name)),
    };
}

/// <summary>
/// DPDK's own vhost PMD: testpmd with two net_vhost ports in io forwarding (port 0 ↔ port 1).
/// Its forwarding lcore is CPU 1 (main lcore 0 only reads commands).
/// </summary>
public sealed class DpdkVhostSwitch : IVhostSwitch
{
    private readonly string[] _sockets;

    public DpdkVhostSwitch(string directory, string lcores = "0,1", int mainLcore = 0)
    {
        _sockets = [Path.Combine(directory, "vhost0.sock"), Path.Combine(directory, "vhost1.sock")];
        Pmd = TestPmd.Start(new TestPmdOptions
        {
            Lcores = lcores,
            MainLcore = mainLcore,
            Vdevs = [TestPmd.Vhost(0, _sockets[0]), TestPmd.Vhost(1, _sockets[1])],
            ForwardMode = "io",
        });
    }

    public TestPmd Pmd { get; }
    public string Name => "dpdk-vhost";
    public string Socket(int port) => _sockets[port];

    public void StartForwarding()
    {
        Pmd.WaitForLinkUp(0);
        Pmd.WaitForLinkUp(1);
        Pmd.Start();
    }

    public void StopForwarding() => Pmd.Stop();

    public void Dispose() => Pmd.Dispose();
}

/// <summary>
/// Our daemon as a switch: <c>serve --socket-dir DIR --vfs 2</c> creates pf.sock, vf1.sock and
/// vf2.sock joined by a learning L2 switch; the test's ports are vf1 and vf2. It forwards by
/// itself, so start and stop are no-ops. <c>--allow-unsealed-memory</c>: DPDK's --no-huge memory is
/// a memfd that cannot be sealed, which the daemon otherwise refuses.
/// </summary>
public sealed class DaemonSwitch : IVhostSwitch
{
    private readonly DaemonProcess _daemon;
    private readonly string[] _sockets;

    public DaemonSwitch(string directory)
    {
        _sockets = [Path.Combine(directory, "vf1.sock"), Path.Combine(directory, "vf2.sock")];
        _daemon = DaemonProcess.Start(["serve", "--socket-dir", directory, "--vfs", "2", "--allow-unsealed-memory"]);
        _daemon.WaitUntil(() => _sockets.All(File.Exists), TestPmd.DefaultTimeout, "vf1.sock and vf2.sock");
    }

    public string Name => "ours";
    public string Socket(int port) => _sockets[port];
    public void StartForwarding() { }
    public void StopForwarding() { }
    public void Dispose() => _daemon.Dispose();
}

/// <summary>
/// Our device group served inside the test process, so the test can compare the switch's per-port
/// counters with what the DPDK front ends counted. Unsealed memory allowed, as for the daemon.
/// </summary>
public sealed class InProcessGroupSwitch : IVhostSwitch
{
    public InProcessGroupSwitch(string directory) =>
        Backend = new GroupBackend(vfs: 2, directory: directory, memoryPolicy: new Memory.MemoryPolicy { AllowUnsealed = true });

    public GroupBackend Backend { get; }
    public string Name => "ours-in-process";
    public string Socket(int port) => Backend.Socket(port + 1);
    public void StartForwarding() { }
    public void StopForwarding() { }
    public void Dispose() => Backend.Dispose();
}
