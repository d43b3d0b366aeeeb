using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Echo;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Restart without loss, in one process: a back end that takes chains and goes away before
/// completing them (as a killed daemon would: nothing written back) is replaced by a new one on the
/// same socket; the front end reconnects as QEMU does, handing its inflight buffer back, and every
/// chain it posted completes exactly once.
/// </summary>
[Trait("tier", "unit")]
public sealed class InflightReconnectTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly CapturingLoggerProvider _logs = new();
    private readonly ILoggerFactory _loggers;

    public InflightReconnectTests()
    {
        Directory.CreateDirectory(_dir);
        _loggers = LoggerFactory.Create(b => b.AddProvider(_logs).SetMinimumLevel(LogLevel.Debug));
    }

    public void Dispose()
    {
        _loggers.Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private string Socket => Path.Combine(_dir, "dev.sock");

    /// <summary>Echoes chains, or while <see cref="Hold"/> is set takes them and never gives them back.</summary>
    private sealed class HoldingEchoDevice(string name) : IVirtioDevice
    {
        private readonly EchoDevice _echo = new(name);
        private int _held;

        public volatile bool Hold;
        public int Held => Volatile.Read(ref _held);

        public string Name => _echo.Name;
        public ulong Features => _echo.Features;
        public ProtocolFeatures ExtraProtocolFeatures => ProtocolFeatures.None;
        public int QueueCount => _echo.QueueCount;
        public int MaxQueueSize => _echo.MaxQueueSize;
        public int ConfigSize => _echo.ConfigSize;
        public void ReadConfig(int offset, Span<byte> data) => _echo.ReadConfig(offset, data);
        public bool WriteConfig(int offset, ReadOnlySpan<byte> data) => _echo.WriteConfig(offset, data);
        public void SetDriverFeatures(ulong features) { }
        public void QueueStarted(DeviceQueue queue) { }
        public void QueueStopped(DeviceQueue queue) { }
        public void Reset() { }

        public void ProcessQueue(DeviceQueue queue)
        {
            if (!Hold)
            {
                _echo.ProcessQueue(queue);
                return;
            }
            while (queue.Ring.Pop() != null)
                Interlocked.Increment(ref _held);
        }
    }

    private static (ushort Head, ulong Dst, byte[] Payload) Post(FrontEndSession s, string text)
    {
        var payload = Echo.Text(text);
        ulong src = s.Ram.Allocate((ulong)payload.Length);
        ulong dst = s.Ram.Allocate((ulong)payload.Length);
        payload.CopyTo(s.Ram.Span(src, payload.Length));
        ushort head = s.Queues[0].AddChain([new(src, (uint)payload.Length, false), new(dst, (uint)payload.Length, true)]);
        s.Queues[0].Notify();
        return (head, dst, payload);
    }

    [Fact]
    public void Chains_a_vanished_back_end_held_complete_exactly_once_after_the_front_end_reconnects_with_its_inflight_buffer()
    {
        var holding = new HoldingEchoDevice("dev");
        var first = new VhostUserServer(_loggers);
        first.Serve(holding, Socket);
        using var s = FrontEndSession.Start(Socket, new FrontEndSession.Options { QueueSize = 64, TrackInflight = true });
        Assert.NotNull(s.Inflight);
        var q = s.Queues[0];

        // Three chains echoed normally, then five taken and held.
        var posted = new List<(ushort Head, ulong Dst, byte[] Payload)>();
        for (int i = 0; i < 3; i++)
        {
            posted.Add(Post(s, $"echoed {i}"));
            q.WaitUsed();
        }
        holding.Hold = true;
        for (int i = 0; i < 5; i++)
            posted.Add(Post(s, $"held {i}"));
        var region = s.Inflight!.QueueRegion(0);
        Assert.True(EchoBackend.WaitUntil(() => region.InflightHeads().Length == 5), "the back end never recorded the held chains");
        Assert.Equal(5, holding.Held);

        // The back end goes away with them: nothing completed, its socket gone.
        first.Dispose();
        Assert.Equal(3, q.UsedIndex);

        // Chains posted while no back end runs are taken by the next one too, after the held ones.
        for (int i = 0; i < 2; i++)
            posted.Add(Post(s, $"while down {i}"));

        using var second = new VhostUserServer(_loggers);
        second.Serve(new EchoDevice("dev"), Socket);
        s.Reconnect(Socket);

        var completed = new List<ushort>();
        var deadline = Environment.TickCount64 + 10_000;
        while (completed.Count < 7 && Environment.TickCount64 < deadline)
        {
            if (q.TryGetUsed(out ushort id, out uint len))
                completed.Add(id);
            else
                Thread.Sleep(5);
        }
        Thread.Sleep(200); // a duplicate would show up by now
        while (q.TryGetUsed(out ushort id, out _))
            completed.Add(id);

        Assert.Equal(posted.Skip(3).Select(p => p.Head).Order(), completed.Order());
        Assert.Equal(10, q.UsedIndex);
        foreach (var (_, dst, payload) in posted)
            Assert.Equal(payload, s.Ram.Span(dst, payload.Length).ToArray());
        // Held chains were resubmitted before the new ones, oldest first.
        Assert.Equal(posted.Skip(3).Take(5).Select(p => p.Head), completed.Take(5));
        Assert.Empty(region.InflightHeads());
    }
}
