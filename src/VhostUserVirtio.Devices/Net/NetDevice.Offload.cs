using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Devices.Net.Offload;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Devices.Net;

/// <summary>
/// Checksum and TCP segmentation offloads. A transmitted frame's request (NEEDS_CSUM, GSO) is
/// checked once, against the sender's features and a copy of the frame's headers, and travels with
/// the frame. A receiver whose driver negotiated the matching GUEST_ features gets it passed on in
/// its virtio-net header, so 64 KiB TCP segments move guest to guest whole; any other receiver gets
/// complete frames, finished by <see cref="SoftwareOffload"/>.
/// </summary>
public sealed partial class NetDevice
{
    /// <summary>Offload features offered with <see cref="NetDeviceOptions.Offloads"/> (UFO is not).</summary>
    public static readonly ulong OffloadFeatures =
        VirtioFeature.Mask(VirtioNet.FCsum) | VirtioFeature.Mask(VirtioNet.FGuestCsum) |
        VirtioFeature.Mask(VirtioNet.FHostTso4) | VirtioFeature.Mask(VirtioNet.FHostTso6) | VirtioFeature.Mask(VirtioNet.FHostEcn) |
        VirtioFeature.Mask(VirtioNet.FGuestTso4) | VirtioFeature.Mask(VirtioNet.FGuestTso6) | VirtioFeature.Mask(VirtioNet.FGuestEcn);

    private readonly LogRateLimit _offloadLog = new(burst: 5, window: TimeSpan.FromSeconds(10));
    // Per worker lane: several workers may deliver into this port's receive rings at once.
    private readonly SoftwareOffload?[] _software = new SoftwareOffload?[Worker.MaxLanes];
    // What this device's driver takes in a receive header, from its features.
    private bool _takesChecksum, _takesTso4, _takesTso6, _takesEcn;

    private void SetReceiveOffloads(ulong features)
    {
        // GUEST_TSO4/6 need GUEST_CSUM (VIRTIO 5.1.3.1): a GSO frame is passed on with NEEDS_CSUM.
        _takesChecksum = VirtioFeature.Has(features, VirtioNet.FGuestCsum);
        _takesTso4 = _takesChecksum && VirtioFeature.Has(features, VirtioNet.FGuestTso4);
        _takesTso6 = _takesChecksum && VirtioFeature.Has(features, VirtioNet.FGuestTso6);
        _takesEcn = VirtioFeature.Has(features, VirtioNet.FGuestEcn);
    }

    /// <summary>Whether this device's driver takes <paramref name="offload"/> in its receive header as it is.</summary>
    private bool TakesWhole(in NetHeader offload)
    {
        if (offload.NeedsChecksum && !_takesChecksum)
            return false;
        if (!offload.IsGso)
            return true;
        return (offload.IsIPv6 ? _takesTso6 : _takesTso4) && (!offload.Ecn || _takesEcn);
    }

    /// <summary>
    /// Checks a transmitted header that asks for an offload; counts and logs a refusal. Reads the
    /// frame's first headers from <paramref name="chain"/> once, after the virtio-net header.
    /// </summary>
    private bool AcceptOffload(DescriptorChain chain, ReadOnlySpan<byte> header, int headerSize, uint frameLength, out NetHeader offload)
    {
        Span<byte> start = stackalloc byte[NetHeader.MaxHeadersLength];
        var reader = chain.Reader();
        reader.Skip(headerSize);
        int n = reader.Read(start[..(int)Math.Min(frameLength, (uint)NetHeader.MaxHeadersLength)]);
        var error = NetHeader.TryParse(header, start[..n], frameLength, _driverFeatures, Mtu, out offload);
        if (error == OffloadError.None)
            return true;
        Counters.Drop(error == OffloadError.TooLong ? DropReason.Oversize : DropReason.BadHeader);
        _logger.LogLimited(_offloadLog, LogLevel.Warning, "{Device}: dropped a frame of {Length} bytes whose virtio-net header was refused: {Error} (flags {Flags}, gso_type {GsoType})",
            Name, frameLength, error, header[VirtioNet.HeaderFlagsOffset], header[VirtioNet.HeaderGsoTypeOffset]);
        return false;
    }

    /// <summary>Delivers a frame whose offload this driver does not take: checksum completed or segments made here, each received as a plain frame.</summary>
    private bool ReceiveResolved(DeviceQueue queue, in Frame frame, int lane, out DropReason reason)
    {
        var software = _software[lane] ??= new SoftwareOffload(Counters.LaneAt(lane));
        var sink = new ReceiveSink(this, queue, lane);
        return software.Resolve(frame, ref sink, out reason);
    }

    private readonly struct ReceiveSink(NetDevice device, DeviceQueue queue, int lane) : IFrameSink
    {
        public bool Take(ReadOnlySpan<byte> frame, out DropReason reason) => device.Receive(queue, new Frame(frame), lane, out reason);
    }
}
