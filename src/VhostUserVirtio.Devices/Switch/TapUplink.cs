using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Net.Offload;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Devices.Switch;

/// <summary>
/// A switch port on a host TAP interface, so guests reach the host (and whatever the host routes or
/// bridges). Frames read from the TAP are forwarded like any guest's; frames for it are written out.
/// Runs on the switch's data-path loop.
/// </summary>
public sealed class TapUplink : ISwitchPort, IReadyHandler, IDisposable
{
    /// <summary>The largest MTU Linux gives a TAP: 65535 less the Ethernet header.</summary>
    public const int TapMaxMtu = 65535 - 14;

    /// <summary>Frames read per wake-up before other work gets a turn.</summary>
    private const int ReadBudget = 64;

    private readonly TapDevice _tap;
    private readonly L2Switch _switch;
    private readonly EventLoop _loop;
    private readonly ILogger _logger;
    // One byte more than a frame may be: a read that fills it was longer (the TAP truncates it) and is dropped.
    private readonly byte[] _rxBuffer = new byte[Frame.MaxLength + 1];
    private readonly byte[] _txBuffer = new byte[Frame.MaxLength];
    private ulong _token;
    // The TAP has no virtio-net header: offloaded frames go out checksummed and segmented.
    private SoftwareOffload? _software;

    private TapUplink(TapDevice tap, L2Switch @switch, EventLoop loop, ILogger logger, int? maxLearnedMacs)
    {
        MaxLearnedMacs = maxLearnedMacs;
        _tap = tap;
        _switch = @switch;
        _loop = loop;
        _logger = logger;
    }

    public string Name => "uplink:" + _tap.Name;
    public PortCounters Counters { get; } = new();

    /// <summary>Behind the host's uplink live its own stations and, over a bridge or a tunnel, other hosts' guests.</summary>
    public int? MaxLearnedMacs { get; }

    /// <summary>
    /// Opens (or creates) the TAP interface, gives it the devices' <paramref name="mtu"/>, plugs it into
    /// the switch and starts reading it on <paramref name="loop"/>. It learns up to
    /// <paramref name="maxLearnedMacs"/> MACs (null: the switch's per-port limit).
    /// </summary>
    /// <remarks>
    /// A new TAP has MTU 1500 whatever the devices' MTU. The host's bridge drops a frame larger than
    /// the port it leaves by, without a word, so behind a larger device MTU (jumbo frames over a
    /// VXLAN tunnel with a raised underlay MTU) every large frame for a guest would vanish there.
    /// </remarks>
    public static TapUplink Attach(string interfaceName, int mtu, L2Switch @switch, EventLoop loop, ILogger logger, int? maxLearnedMacs = null)
    {
        var tap = TapDevice.Open(interfaceName);
        try
        {
            // A TAP's MTU stops short of the largest virtio-net MTU by its Ethernet header.
            mtu = Math.Min(mtu, TapMaxMtu);
            if (tap.Mtu != mtu)
            {
                tap.SetMtu(mtu);
                logger.LogInformation("uplink {Tap}: MTU set to {Mtu}, the devices' MTU", interfaceName, mtu);
            }
        }
        catch
        {
            tap.Dispose();
            throw;
        }
        var uplink = new TapUplink(tap, @switch, loop, logger, maxLearnedMacs);
        @switch.Attach(uplink);
        loop.Invoke(() => uplink._token = loop.Register(tap.Descriptor, EpollEvents.In, uplink));
        logger.LogInformation("uplink {Tap} attached to the switch", interfaceName);
        return uplink;
    }

    public void OnReady(EpollEvents events)
    {
        for (int i = 0; i < ReadBudget; i++)
        {
            int n = _tap.Read(_rxBuffer);
            if (n < 0)
                break;
            if (n < Frame.MinLength)
            {
                Counters.Drop(DropReason.Runt);
                continue;
            }
            if (n > Frame.MaxLength)
            {
                Counters.Drop(DropReason.Oversize);
                continue;
            }
            _switch.Forward(this, new Frame(_rxBuffer.AsSpan(0, n)));
        }
        _switch.FlushNotifications();
    }

    public bool Deliver(in Frame frame, Mac destination, out DropReason reason)
    {
        if (frame.Length > _txBuffer.Length)
        {
            reason = DropReason.Oversize;
            return false;
        }
        reason = DropReason.UplinkError;
        // Every worker of the group may deliver here: one frame at a time through the one buffer
        // (a system call per frame anyway, so the lock costs little).
        lock (_txBuffer)
        {
            if (!frame.Offload.IsNone)
            {
                // Under the lock: its buffers are the uplink's one set, and it counts in one lane.
                _software ??= new SoftwareOffload(Counters.LaneAt(0));
                var sink = new TapSink(_tap);
                return _software.Resolve(frame, ref sink, out reason);
            }
            int n = frame.CopyTo(_txBuffer);
            return _tap.Write(_txBuffer.AsSpan(0, n));
        }
    }

    public void FlushNotifications() { }

    private readonly struct TapSink(TapDevice tap) : IFrameSink
    {
        public bool Take(ReadOnlySpan<byte> frame, out DropReason reason)
        {
            reason = DropReason.UplinkError;
            return tap.Write(frame);
        }
    }

    public void Dispose()
    {
        _switch.Detach(this);
        try
        {
            _loop.Invoke(() => _loop.Unregister(_tap.Descriptor, _token));
        }
        catch (ObjectDisposedException)
        {
            // The loop is already gone, and with it the registration.
        }
        _tap.Dispose();
    }
}
