using System.Buffers.Binary;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Malformed or out-of-range vhost-user messages. Each is refused (failure ack when one was asked for,
/// or the connection dropped when the stream cannot be trusted), logged, its descriptors closed, and
/// the back end, the refused device's running rings and every other device keep working.
/// </summary>
[Trait("tier", "unit")]
public sealed class HostileMessageTests : IDisposable
{
    private readonly EchoBackend _backend = new(devices: 2);
    private readonly FrontEndSession _s;
    private readonly FrontEndSession _other;

    public HostileMessageTests()
    {
        _other = FrontEndSession.Start(_backend.SocketPath(1));
        _s = FrontEndSession.Start(_backend.SocketPath(0));
    }

    public void Dispose()
    {
        _s.Dispose();
        _other.Dispose();
        _backend.Dispose();
    }

    private const uint NeedReply = MessageHeader.Version | MessageHeader.NeedReplyFlag;

    /// <summary>Sends a raw request asking for an ack; returns the ack value.</summary>
    private ulong SendForAck(FrontendRequest request, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default)
    {
        _s.Connection.SendRaw((uint)request, NeedReply, payload, fds);
        var (_, body) = _s.Connection.ReadReply(request);
        Assert.Equal(8, body.Length);
        return BinaryPrimitives.ReadUInt64LittleEndian(body);
    }

    private Backend.VhostUserBackend Refusing => _backend.Endpoints[0].Backend;

    /// <summary>The refused device's last refusal was of this kind.</summary>
    private void AssertRefusedAs(MessageErrorKind kind) =>
        Assert.True(EchoBackend.WaitUntil(() => Refusing.LastRejection?.Kind == kind), $"last refusal: {Refusing.LastRejection}");

    private void AssertStillServing()
    {
        var payload = Echo.Text("refused device still runs");
        Assert.Equal(payload, Echo.RoundTrip(_s, 0, payload));
        payload = Echo.Text("other device unaffected");
        Assert.Equal(payload, Echo.RoundTrip(_other, 1, payload));
    }

    private static byte[] State(uint index, uint num)
    {
        var p = new byte[8];
        new VringState(index, num).Write(p);
        return p;
    }

    [Fact]
    public void Payload_size_mismatch_is_refused_with_a_failure_ack()
    {
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetVringNum, new byte[4]));
        Assert.True(_backend.Logs.WaitForWarning("malformed SetVringNum"));
        AssertRefusedAs(MessageErrorKind.MalformedPayload);
        AssertStillServing();
    }

    [Fact]
    public void Oversized_header_drops_the_connection_and_the_socket_accepts_again()
    {
        Span<byte> header = stackalloc byte[12];
        new MessageHeader((uint)FrontendRequest.SetOwner, MessageHeader.Version, 0x10000).Write(header);
        _s.Connection.SendBytes(header);
        Assert.True(_s.Connection.WaitForClose(10_000));
        Assert.True(_backend.Logs.WaitForWarning("exceeds the 4096-byte limit"));
        Echo.AssertDeviceWorks(_backend.SocketPath(0));
        var payload = Echo.Text("other device unaffected");
        Assert.Equal(payload, Echo.RoundTrip(_other, 0, payload));
    }

    [Fact]
    public void Wrong_protocol_version_drops_the_connection()
    {
        _s.Connection.SendRaw((uint)FrontendRequest.SetOwner, 0x2, default);
        Assert.True(_s.Connection.WaitForClose(10_000));
        Assert.True(_backend.Logs.WaitForWarning("protocol version 2"));
        Echo.AssertDeviceWorks(_backend.SocketPath(0));
    }

    [Fact]
    public void Too_many_descriptors_drop_the_connection_and_every_descriptor_is_closed()
    {
        var probes = Enumerable.Range(0, 12).Select(_ => new FdProbe()).ToArray();
        try
        {
            _s.Connection.SendRaw((uint)FrontendRequest.SetVringCall, NeedReply, BitConverter.GetBytes(0UL), probes.Select(p => p.Fd).ToArray());
            foreach (var p in probes)
                p.Release();
            Assert.True(_s.Connection.WaitForClose(10_000));
            Assert.True(_backend.Logs.WaitForWarning("more than 8 descriptors"));
            Assert.All(probes, p => Assert.True(p.WaitClosed(), "a received descriptor was leaked"));
        }
        finally
        {
            foreach (var p in probes) p.Dispose();
        }
        Echo.AssertDeviceWorks(_backend.SocketPath(0));
    }

    [Fact]
    public void Unexpected_descriptors_are_refused_and_closed()
    {
        using var a = new FdProbe();
        using var b = new FdProbe();
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetVringNum, State(0, 256), new[] { a.Fd, b.Fd }));
        a.Release();
        b.Release();
        Assert.True(a.WaitClosed() && b.WaitClosed(), "descriptors attached to a refused message were not closed");
        Assert.True(_backend.Logs.WaitForWarning("2 descriptors attached"));
        AssertRefusedAs(MessageErrorKind.WrongDescriptorCount);
        AssertStillServing();
    }

    [Fact]
    public void Queue_index_out_of_range_is_refused_for_every_ring_message()
    {
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetVringNum, State(99, 256)));
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetVringBase, State(2, 0)));
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetVringEnable, State(255, 1)));
        var addr = new byte[VringAddress.Size];
        new VringAddress(7, 0, 0x1000, 0x2000, 0x3000, 0).Write(addr);
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetVringAddr, addr));
        using var probe = new FdProbe();
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetVringKick, BitConverter.GetBytes(VringFile.Encode(200, false)), new[] { probe.Fd }));
        probe.Release();
        Assert.True(probe.WaitClosed(), "kick descriptor for a bad index was not closed");
        Assert.True(_backend.Logs.WaitForWarning("queue index 99 is out of range"));
        AssertRefusedAs(MessageErrorKind.IndexOutOfRange);
        Assert.Equal(5, Refusing.Rejections(MessageErrorKind.IndexOutOfRange));
        AssertStillServing();
    }

    [Fact]
    public void Get_vring_base_with_a_bad_index_drops_the_connection_since_its_reply_cannot_fail()
    {
        _s.Connection.SendRaw((uint)FrontendRequest.GetVringBase, MessageHeader.Version, State(50, 0));
        Assert.True(_s.Connection.WaitForClose(10_000));
        Assert.True(_backend.Logs.WaitForWarning("queue index 50 is out of range"));
        Echo.AssertDeviceWorks(_backend.SocketPath(0));
    }

    [Fact]
    public void Overlapping_memory_regions_are_refused_and_the_old_table_stays()
    {
        var r = _s.Ram.Regions[0];
        var table = MemoryTablePayload.Write(new[]
        {
            new MemoryRegionDescription(r.Gpa, r.Size, r.UserAddress, 0),
            new MemoryRegionDescription(r.Gpa + 0x1000, 0x1000, r.UserAddress + r.Size, 0),
        });
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetMemTable, table, new[] { r.Fd.Number, r.Fd.Number }));
        Assert.True(_backend.Logs.WaitForWarning("overlaps"));
        AssertRefusedAs(MessageErrorKind.BadMemory);
        AssertStillServing();
    }

    [Fact]
    public void Region_larger_than_its_file_is_refused_instead_of_faulting_later()
    {
        using var small = MemFd.Create("small", 4096);
        var region = new MemoryRegionDescription(0x4000_0000, 1 << 20, 0x5000_0000, 0);
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.AddMemReg, SingleRegionPayload.Write(region), new[] { small.Number }));
        Assert.True(_backend.Logs.WaitForWarning("the file has 4096"));
        AssertStillServing();
    }

    [Fact]
    public void Region_whose_end_overflows_is_refused()
    {
        var r = _s.Ram.Regions[0];
        var region = new MemoryRegionDescription(ulong.MaxValue - 0xfff, 0x2000, 0x6000_0000, 0);
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.AddMemReg, SingleRegionPayload.Write(region), new[] { r.Fd.Number }));
        Assert.True(_backend.Logs.WaitForWarning("overflows"));
        AssertStillServing();
    }

    [Fact]
    public void Memory_table_whose_region_count_disagrees_with_its_descriptors_is_refused()
    {
        var r = _s.Ram.Regions[0];
        var table = MemoryTablePayload.Write(new[] { new MemoryRegionDescription(r.Gpa, r.Size, r.UserAddress, 0) });
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetMemTable, table, new[] { r.Fd.Number, r.Fd.Number }));
        Assert.True(_backend.Logs.WaitForWarning("2 descriptors attached, SetMemTable takes 1"));
        AssertStillServing();
    }

    [Fact]
    public void Unknown_and_unnegotiated_requests_are_refused()
    {
        Assert.NotEqual(0UL, SendForAck((FrontendRequest)99, default));
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetLogFd, new byte[8]));
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SendRarp, new byte[8]));
        Assert.True(_backend.Logs.WaitForWarning("unsupported request 99"));
        Assert.True(_backend.Logs.WaitForWarning("needs protocol feature Rarp"));
        AssertRefusedAs(MessageErrorKind.NotNegotiated);
        Assert.Equal(2, Refusing.Rejections(MessageErrorKind.UnknownRequest)); // request 99 and SET_LOG_FD
        AssertStillServing();
    }

    [Fact]
    public void Features_never_offered_are_refused()
    {
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetFeatures, BitConverter.GetBytes(1UL << 60)));
        Assert.True(_backend.Logs.WaitForWarning("bits never offered"));
        AssertRefusedAs(MessageErrorKind.InvalidValue);
        AssertStillServing();
    }

    [Fact]
    public void Features_cannot_change_while_rings_run_but_the_same_features_again_are_accepted()
    {
        // The device's data path reads the negotiated features for every chain (a net device's header
        // size and mergeable buffers): a change under a running ring would corrupt what it writes.
        ulong features = _s.Features;
        ulong flipped = features ^ (1UL << VirtioFeature.RingEventIdx);
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetFeatures, BitConverter.GetBytes(flipped)));
        Assert.True(_backend.Logs.WaitForWarning("while rings run"));
        AssertRefusedAs(MessageErrorKind.InvalidState);
        Assert.Equal(0UL, SendForAck(FrontendRequest.SetFeatures, BitConverter.GetBytes(features)));
        AssertStillServing();
    }

    [Fact]
    public void Kicks_without_a_descriptor_are_logged_through_the_rate_limit()
    {
        int Lines() => _backend.Logs.Lines.Count(l => l.Text.Contains("no kick descriptor"));
        int before = Lines();
        for (int i = 0; i < 2000; i++)
            _s.Connection.SetVringKick(0, null);
        // Handled in order: once this is acknowledged, every kick before it has been.
        Assert.Equal(0UL, SendForAck(FrontendRequest.SetVringNum, State(0, 256)));
        int logged = Lines() - before;
        Assert.InRange(logged, 1, 100);
        var payload = Echo.Text("other device unaffected");
        Assert.Equal(payload, Echo.RoundTrip(_other, 1, payload));
    }

    [Fact]
    public void Set_up_messages_a_front_end_repeats_are_logged_through_the_rate_limit()
    {
        int Lines() => _backend.Logs.Lines.Count(l => l.Text.Contains("memory table set", StringComparison.Ordinal));
        int before = Lines();
        for (int i = 0; i < 1000; i++)
            _s.Connection.SetMemTable(_s.Ram);
        _s.Connection.GetFeatures(); // answered in order: every table before it has been handled
        int logged = Lines() - before;
        Assert.InRange(logged, 1, 100);
        var payload = Echo.Text("other device unaffected");
        Assert.Equal(payload, Echo.RoundTrip(_other, 1, payload));
    }

    [Fact]
    public async Task A_flood_of_refused_messages_logs_a_bounded_number_of_lines_and_other_devices_stay_served()
    {
        int Warnings() => _backend.Logs.Lines.Count(l => l.Level >= Microsoft.Extensions.Logging.LogLevel.Warning);
        int before = Warnings();
        var flood = new byte[20 * 20_000];
        for (int i = 0; i < 20_000; i++)
        {
            var m = flood.AsSpan(i * 20);
            new MessageHeader((uint)FrontendRequest.SetVringNum, MessageHeader.Version, 8).Write(m);
            new VringState(99, 256).Write(m[12..]);   // out of range: refused, no reply asked
        }
        var sender = Task.Run(() => _s.Connection.SendBytes(flood));
        await sender.WaitAsync(TimeSpan.FromSeconds(60)); // a back end that stopped reading the flood times out here
        Assert.True(EchoBackend.WaitUntil(() => Refusing.Rejections(MessageErrorKind.IndexOutOfRange) == 20_000, 30_000),
            $"only {Refusing.Rejections(MessageErrorKind.IndexOutOfRange)} of 20000 refusals counted");
        int logged = Warnings() - before;
        // Ten lines a second per kind, plus one "suppressed" line per window: a flood that takes a
        // few seconds logs tens of lines, not twenty thousand.
        Assert.True(logged < 500, $"{logged} log lines for 20000 refused messages");
        Assert.True(_backend.Logs.Lines.Any(l => l.Text.Contains("suppressed by the rate limit")) || logged < 20,
            "refusals were dropped without saying how many");
        AssertStillServing();
    }

    [Fact]
    public void Resizing_a_running_ring_is_refused()
    {
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetVringNum, State(0, 128)));
        Assert.NotEqual(0UL, SendForAck(FrontendRequest.SetVringNum, State(0, 100)));
        Assert.True(_backend.Logs.WaitForWarning("is running"));
        AssertStillServing();
    }

    [Fact]
    public async Task A_flood_of_messages_from_one_front_end_leaves_other_devices_served()
    {
        var flood = new byte[12 * 20_000];
        for (int i = 0; i < 20_000; i++)
            new MessageHeader((uint)FrontendRequest.SetOwner, MessageHeader.Version, 0).Write(flood.AsSpan(i * 12));
        var sender = Task.Run(() => _s.Connection.SendBytes(flood));
        for (int i = 0; i < 20; i++)
        {
            var payload = Echo.Text($"served during the flood {i}");
            Assert.Equal(payload, Echo.RoundTrip(_other, i % 2, payload));
        }
        await sender.WaitAsync(TimeSpan.FromSeconds(30));
        AssertStillServing();
    }

    [Fact]
    public void Partial_message_then_disconnect_leaves_the_device_ready_for_the_next_front_end()
    {
        Span<byte> header = stackalloc byte[12];
        new MessageHeader((uint)FrontendRequest.SetFeatures, MessageHeader.Version, 8).Write(header);
        _s.Connection.SendBytes(header[..7]);
        _s.Dispose();
        Echo.AssertDeviceWorks(_backend.SocketPath(0));
    }
}
