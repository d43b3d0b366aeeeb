using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Echo;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// GET_INFLIGHT_FD / SET_INFLIGHT_FD over a real socket: gated on INFLIGHT_SHMFD, the GET reply
/// carries a fresh sealed memfd, SET takes exactly one descriptor whose buffer is checked against the
/// device and the file, and a back end that went away with chains taken resumes them for a front end
/// that reconnects with its buffer, each exactly once.
/// </summary>
[Trait("tier", "unit")]
public sealed class InflightProtocolTests : IDisposable
{
    private readonly EchoBackend _backend = new(devices: 1);

    public void Dispose() => _backend.Dispose();

    private VhostUserBackend Backend => _backend.Endpoints[0].Backend;

    private VhostUserFrontEnd Connect(ProtocolFeatures without = ProtocolFeatures.None)
    {
        var fe = VhostUserFrontEnd.Connect(_backend.SocketPath(0));
        fe.GetFeatures();
        fe.SetProtocolFeatures(fe.GetProtocolFeatures() & ~without);
        fe.SetOwner();
        return fe;
    }

    [Fact]
    public void Inflight_requests_are_refused_until_the_protocol_feature_is_negotiated()
    {
        using var fe = Connect(without: ProtocolFeatures.InflightShmfd);
        var reply = fe.GetInflightFd(2, 256, out var fd);
        Assert.Null(fd);
        Assert.Equal(0UL, reply.MmapSize); // "no buffer", the one failure a GET reply can express
        Assert.Equal(MessageErrorKind.NotNegotiated, Backend.LastRejection?.Kind);

        using var memfd = MemFd.Create("inflight", (long)InflightLayout.BufferSize(2, 256));
        Assert.Throws<FrontEndException>(() => fe.SetInflightFd(memfd, new InflightPayload(InflightLayout.BufferSize(2, 256), 0, 2, 256)));
        Assert.Equal(MessageErrorKind.NotNegotiated, Backend.LastRejection?.Kind);
        Assert.Equal(2UL, fe.GetQueueNum()); // still connected and answering
    }

    [Fact]
    public void Get_inflight_fd_replies_with_a_zeroed_sealed_memfd_sized_for_the_queues_asked()
    {
        using var fe = Connect();
        Assert.True((fe.Negotiated & ProtocolFeatures.InflightShmfd) != 0);
        var reply = fe.GetInflightFd(2, 256, out var fd);
        using (fd)
        {
            Assert.NotNull(fd);
            Assert.Equal(InflightLayout.BufferSize(2, 256), reply.MmapSize);
            Assert.Equal(2UL * 4160, reply.MmapSize);
            Assert.Equal(0UL, reply.MmapOffset);
            Assert.Equal((2, 256), ((int)reply.NumQueues, (int)reply.QueueSize));
            Assert.Equal((long)reply.MmapSize, fd!.GetFileSize());
            Assert.True(fd.IsSealedAgainstShrink);
            using var view = MemoryMapping.Map(fd, reply.MmapSize);
            var bytes = new byte[reply.MmapSize];
            System.Runtime.InteropServices.Marshal.Copy(view.Address, bytes, 0, bytes.Length);
            Assert.All(bytes, b => Assert.Equal(0, b));
        }
    }

    [Theory]
    [InlineData(0, 256)]
    [InlineData(3, 256)]      // the echo device has 2 queues
    [InlineData(2, 0)]
    [InlineData(2, 2048)]     // above its largest ring (1024)
    public void Get_inflight_fd_for_a_geometry_the_device_cannot_have_gives_no_buffer(int queues, int queueSize)
    {
        using var fe = Connect();
        var reply = fe.GetInflightFd((ushort)queues, (ushort)queueSize, out var fd);
        Assert.Null(fd);
        Assert.Equal(0UL, reply.MmapSize);
        Assert.NotNull(Backend.LastRejection);
        Assert.Equal(2UL, fe.GetQueueNum());
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Set_inflight_fd_without_exactly_one_descriptor_is_refused(int fds)
    {
        using var fe = Connect();
        var reply = fe.GetInflightFd(2, 256, out var fd);
        using (fd)
        using (var second = fd!.Duplicate())
        {
            int[] attached = fds == 0 ? [] : [fd.Number, second.Number];
            Assert.Throws<FrontEndException>(() => fe.Request(FrontendRequest.SetInflightFd, reply.ToArray(), attached));
            Assert.Equal(MessageErrorKind.WrongDescriptorCount, Backend.LastRejection?.Kind);
            Assert.Null(Backend.Inflight);
        }
    }

    public enum Lie { SizeBeyondFile, OffsetBeyondFile, TooManyQueues, QueueSizeTooLarge, WrongPayloadSize }

    [Theory]
    [InlineData(Lie.SizeBeyondFile)]
    [InlineData(Lie.OffsetBeyondFile)]
    [InlineData(Lie.TooManyQueues)]
    [InlineData(Lie.QueueSizeTooLarge)]
    [InlineData(Lie.WrongPayloadSize)]
    public void Set_inflight_fd_whose_buffer_lies_about_itself_is_refused_and_the_device_keeps_working(Lie lie)
    {
        using (var fe = Connect())
        {
            var reply = fe.GetInflightFd(2, 256, out var fd);
            using var _ = fd;
            var payload = lie switch
            {
                Lie.SizeBeyondFile => reply with { MmapSize = reply.MmapSize * 2, NumQueues = 4 },
                Lie.OffsetBeyondFile => reply with { MmapOffset = 4096 },
                Lie.TooManyQueues => reply with { NumQueues = 3, MmapSize = InflightLayout.BufferSize(3, 256) },
                Lie.QueueSizeTooLarge => reply with { NumQueues = 1, QueueSize = 4096 },
                _ => reply,
            };
            var bytes = payload.ToArray();
            if (lie == Lie.WrongPayloadSize)
                bytes = bytes[..20]; // the packed form some implementations mistakenly send
            Assert.Throws<FrontEndException>(() => fe.Request(FrontendRequest.SetInflightFd, bytes, [fd!.Number]));
            Assert.Null(Backend.Inflight);
            Assert.Equal(2UL, fe.GetQueueNum());
        }
        Echo.AssertDeviceWorks(_backend.SocketPath(0));
    }

    [Fact]
    public void A_ring_that_starts_on_a_corrupt_inflight_region_breaks_alone_and_signals_its_error_descriptor()
    {
        using var region = InflightRegion.Create(2, 256);
        region.QueueRegion(0).WriteHeader(0, 7, 256, 0, 0); // a version nobody defined
        // Bring the device up with that buffer handed over before the rings start.
        using var s = FrontEndSession.Start(_backend.SocketPath(0), new FrontEndSession.Options { TrackInflight = false });
        s.Connection.GetVringBase(0);
        s.Connection.GetVringBase(1);
        s.Connection.SetInflightFd(region);
        s.Queues[0].Configure(s.Connection, s.ErrorFds[0]);
        s.Queues[1].Configure(s.Connection, s.ErrorFds[1]);
        s.Connection.SetVringEnable(0, true);
        s.Connection.SetVringEnable(1, true);

        Assert.True(s.ErrorFds[0].Wait(10_000));
        Assert.Equal(RingErrorKind.InflightRegionCorrupt, Backend.Queues[0].Ring.Fault?.Kind);
        Assert.Equal(Echo.Text("queue 1 unaffected"), Echo.RoundTrip(s, 1, Echo.Text("queue 1 unaffected")));
        Assert.Equal(7, region.QueueRegion(0).Version); // left as it was
    }

    [Fact]
    public void Reset_device_drops_the_inflight_buffer()
    {
        using var s = FrontEndSession.Start(_backend.SocketPath(0), new FrontEndSession.Options { TrackInflight = true });
        Assert.NotNull(s.Inflight);
        Assert.True(EchoBackend.WaitUntil(() => Backend.Inflight != null));
        s.Connection.ResetDevice();
        Assert.Null(Backend.Inflight);
        Assert.All(Backend.Queues, q => Assert.Null(q.Inflight));
    }
}
