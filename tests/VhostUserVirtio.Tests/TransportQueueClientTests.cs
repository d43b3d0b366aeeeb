using System.Buffers.Binary;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Memory;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The transport-queue client over a real split ring whose device side is a scripted responder on
/// the project's own queue code: which descriptors a command becomes and how replies come back.
/// </summary>
[Trait("tier", "unit")]
public sealed class TransportQueueClientTests : IDisposable
{
    /// <summary>One command as the device saw it: the readable bytes and the descriptor sizes on each side.</summary>
    private sealed record Seen(byte[] Readable, uint[] ReadableSizes, uint[] WritableSizes);

    private readonly GuestRam _ram = new(1 << 20);
    private readonly GuestMemoryTable _table = new();
    private readonly DriverQueue _driver;
    private readonly SplitQueue _device = new(16);
    private readonly TransportQueueClient _client;
    private readonly List<Seen> _seen = [];
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _deviceThread;
    /// <summary>The scripted device: the whole device-writable part (ack, command-in-data) for a readable part.</summary>
    private Func<byte[], byte[]> _respond = _ => [0, 0, 0, 0];

    public TransportQueueClientTests()
    {
        _driver = new DriverQueue(_ram, 1, 16);
        var r = _ram.Regions[0];
        _table.Replace([(r.Gpa, r.Size, r.UserAddress, r.MmapOffset)], [r.Fd.Duplicate()]);
        Assert.Null(_device.Configure(_table.Current, 16, _driver.DescriptorTable, _driver.AvailableRing, _driver.UsedRing));
        _client = new TransportQueueClient(_ram, _driver);
        _deviceThread = new Thread(Serve) { IsBackground = true, Name = "scripted tvq device" };
        _deviceThread.Start();
    }

    private void Serve()
    {
        while (!_stop.IsCancellationRequested)
        {
            _driver.Kick.Wait(50);
            while (_device.Pop() is { } chain)
            {
                var readable = new byte[chain.ReadableLength];
                chain.Reader().Read(readable);
                lock (_seen)
                    _seen.Add(new Seen(readable, chain.Readable.ToArray().Select(s => s.Length).ToArray(),
                        chain.Writable.ToArray().Select(s => s.Length).ToArray()));
                var reply = _respond(readable);
                var writer = chain.Writer();
                uint written = (uint)writer.Write(reply);
                _device.PushUsed(chain.Head, written);
                _driver.Call.Signal();
            }
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _deviceThread.Join(TimeSpan.FromSeconds(10));
        _driver.Dispose();
        _table.Dispose();
        _ram.Dispose();
        _stop.Dispose();
    }

    private Seen Last() { lock (_seen) return _seen[^1]; }

    private static byte[] Ok(params byte[] inData) => [0, 0, 0, 0, .. inData];

    private static byte[] Error(AdminStatus status, AdminQualifier qualifier)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(b, 1);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(4), (ushort)status);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(6), (ushort)qualifier);
        return b;
    }

    [Fact]
    public void Dev_create_goes_to_the_owner_as_header_then_data_and_returns_the_le32_id()
    {
        _respond = _ => Ok(5, 0, 0, 0, 0, 0, 0, 0);
        Assert.Equal(5u, _client.DevCreate());
        var seen = Last();
        Assert.Equal(Convert.FromHexString("0000000000000000" + "0100" + "0200" + "0100000000000000"), seen.Readable);
        Assert.Equal([12u, 8u], seen.ReadableSizes);
        Assert.Equal([4u, 8u], seen.WritableSizes);
    }

    [Fact]
    public void A_command_without_a_result_still_leaves_room_for_an_errors_status_and_qualifier()
    {
        _respond = _ => Error(AdminStatus.Einval, AdminQualifier.InvalidMember);
        var e = Assert.Throws<TransportCommandException>(() => _client.DevDestroy(9));
        Assert.Equal((AdminStatus.Einval, AdminQualifier.InvalidMember), (e.Status, e.Qualifier));
        Assert.Contains("EINVAL/INVALIDMEMBER", e.Message, StringComparison.Ordinal);
        var seen = Last();
        Assert.Equal([12u], seen.ReadableSizes);
        Assert.Equal([4u, 4u], seen.WritableSizes);
        Assert.Equal(9UL, BinaryPrimitives.ReadUInt64LittleEndian(seen.Readable));
    }

    [Fact]
    public void Typed_commands_send_their_layouts_to_the_device_id_and_decode_the_answers()
    {
        _respond = r => (BinaryPrimitives.ReadUInt16LittleEndian(r.AsSpan(8)), BinaryPrimitives.ReadUInt16LittleEndian(r.AsSpan(10))) switch
        {
            (1, 1) => Ok(2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0),
            (4, 1) => Ok(0x52, 0x54, 0, 0x12, 0x34, 0x56),
            (6, 3) => Ok([.. Convert.FromHexString("0000e0fe00000000" + "21400000" + "03000000")]),
            (7, 2) => Ok(),
            _ => Error(AdminStatus.Einval, AdminQualifier.InvalidOpcode),
        };
        Assert.Equal([3u, 4u], _client.DevList());
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(Last().Readable));

        Assert.Equal(Convert.FromHexString("525400123456"), _client.CfgRead(3, 0, 6));
        Assert.Equal(Convert.FromHexString("0300000000000000" + "0400" + "0100" + "00000000" + "06000000"), Last().Readable);

        Assert.Equal(new MsiVector(0xfee00000, 0x4021, true, true), _client.MsiGet(3, 1));
        Assert.Equal(Convert.FromHexString("0300000000000000" + "0600" + "0300" + "0100000000000000"), Last().Readable);

        _client.Notify(3, 2);
        Assert.Equal(Convert.FromHexString("0300000000000000" + "0700" + "0200" + "0200000000000000"), Last().Readable);

        var e = Assert.Throws<TransportCommandException>(() => _client.GenerationGet(3));
        Assert.Equal(AdminQualifier.InvalidOpcode, e.Qualifier);
    }

    [Fact]
    public void Raw_execute_sends_exactly_what_it_is_given_and_reports_a_missing_ack()
    {
        _respond = _ => [];
        var reply = _client.Execute(0, 0x99, 0x77, [1, 2, 3], resultCapacity: 0);
        Assert.False(reply.Ok);
        Assert.Contains("no ack written", reply.Describe(), StringComparison.Ordinal);
        var seen = Last();
        Assert.Equal([12u, 3u], seen.ReadableSizes);
        Assert.Equal([4u], seen.WritableSizes);
        Assert.Equal(Convert.FromHexString("0000000000000000" + "9900" + "7700" + "010203"), seen.Readable);
    }

    [Fact]
    public void Many_commands_in_a_row_reuse_buffers_and_descriptors()
    {
        _respond = _ => Ok(0x0f, 0, 0, 0, 0, 0, 0, 0);
        for (int i = 0; i < 200; i++)
            Assert.Equal(0x0f, _client.StatusGet(1));
        Assert.Equal(16, _driver.FreeDescriptors);
    }
}
