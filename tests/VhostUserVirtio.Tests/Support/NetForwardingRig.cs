using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using VhostUserVirtio.Backend;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Group;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// Frames from VF1 to VF2 through the real switch, in-process: a device group served on one worker,
/// a front end on each VF (VF1 transmits a fixed batch, VF2 keeps receive buffers posted). Shared by
/// the allocation test and the forwarding benchmark, so it must not use xunit.
/// </summary>
public sealed class NetForwardingRig : IDisposable
{
    private const int HeaderSize = 12;
    // The VFs' own MACs (the group's MacBase plus the member id): an untrusted VF may send only from its own.
    private const string Vf1Mac = "02:56:56:00:00:01", Vf2Mac = "02:56:56:00:00:02";
    private readonly string _directory = Path.Combine(Path.GetTempPath(), "vuv-fwd-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly VhostUserServer _server;
    private readonly DeviceGroup _group;
    private readonly FrontEndSession _tx;
    private readonly FrontEndSession _rx;
    private readonly BufferSpec[] _frames;
    private readonly BufferSpec[] _rxBuffers;
    private readonly Dictionary<ushort, int> _rxHeadToBuffer = new();

    public NetForwardingRig(int batch, int frameSize, ILoggerFactory? loggers = null, bool packed = false)
    {
        Batch = batch;
        loggers ??= NullLoggerFactory.Instance;
        _server = new VhostUserServer(loggers);
        _group = new DeviceGroup(_server, new DeviceGroupOptions { SocketDirectory = _directory, Vfs = 2 }, loggers);
        _group.Start();
        var options = new FrontEndSession.Options { QueueCount = 2, QueueSize = 2 * batch, RamSize = 16 << 20, PackedRings = packed };
        _tx = FrontEndSession.Start(Path.Combine(_directory, "vf1.sock"), options);
        _rx = FrontEndSession.Start(Path.Combine(_directory, "vf2.sock"), options);

        // Unicast to VF2's learned MAC after one broadcast from it, so nothing is flooded to the owner.
        _frames = new BufferSpec[batch];
        for (int i = 0; i < batch; i++)
        {
            ulong a = _tx.Ram.Allocate((ulong)(HeaderSize + frameSize), 64);
            var f = _tx.Ram.Span(a, HeaderSize + frameSize);
            f.Clear();
            Devices.Switch.Mac.Parse(Vf2Mac).Write(f[HeaderSize..]);
            Devices.Switch.Mac.Parse(Vf1Mac).Write(f[(HeaderSize + 6)..]);
            _frames[i] = new BufferSpec(a, (uint)(HeaderSize + frameSize), false);
        }
        _rxBuffers = new BufferSpec[2 * batch];
        for (int i = 0; i < _rxBuffers.Length; i++)
            _rxBuffers[i] = new BufferSpec(_rx.Ram.Allocate(2048, 64), 2048, true);
        for (int i = 0; i < _rxBuffers.Length; i++)
            _rxHeadToBuffer[_rx.Queues[0].AddChain(_rxBuffers.AsSpan(i, 1))] = i;
        _rx.Queues[0].Notify();
        Learn();
    }

    public int Batch { get; }
    public DeviceGroup Group => _group;
    public Worker DataPath => _group.DataPath;

    private void Learn()
    {
        var q = _rx.Queues[1];
        ulong a = _rx.Ram.Allocate(HeaderSize + 60, 64);
        var f = _rx.Ram.Span(a, HeaderSize + 60);
        f.Clear();
        Devices.Switch.Mac.Broadcast.Write(f[HeaderSize..]);
        Devices.Switch.Mac.Parse(Vf2Mac).Write(f[(HeaderSize + 6)..]);
        q.AddChain(new BufferSpec[] { new(a, HeaderSize + 60, false) });
        q.Notify();
        q.WaitUsed();
        // The broadcast reached VF1's receive ring only if VF1 had buffers; it has none, so it is dropped there.
    }

    /// <summary>Sends one batch from VF1, waits until VF2 received all of it, and gives VF2 its buffers back.</summary>
    public void ForwardBatch()
    {
        var tx = _tx.Queues[1];
        var rx = _rx.Queues[0];
        for (int i = 0; i < Batch; i++)
            tx.AddChain(_frames.AsSpan(i, 1));
        tx.Notify();
        for (int i = 0; i < Batch; i++)
            tx.WaitUsed();
        for (int i = 0; i < Batch; i++)
        {
            var (head, _) = rx.WaitUsed();
            int buffer = _rxHeadToBuffer[head];
            _rxHeadToBuffer[rx.AddChain(_rxBuffers.AsSpan(buffer, 1))] = buffer;
        }
        rx.Notify();
    }

    public void Dispose()
    {
        _tx.Dispose();
        _rx.Dispose();
        _group.Dispose();
        _server.Dispose();
        try { Directory.Delete(_directory, recursive: true); } catch (IOException) { }
    }
}
