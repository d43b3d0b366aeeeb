using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The owner driver's transport-queue framing, byte by byte against docs/owner-binding.md and the
/// command layouts of its section 7.1 source: what the driver writes and how it reads what comes back.
/// </summary>
[Trait("tier", "unit")]
public sealed class TransportFramesTests
{
    private static byte[] Hex(string s) => Convert.FromHexString(s.Replace(" ", "", StringComparison.Ordinal));

    [Fact]
    public void A_frame_header_is_the_device_id_as_le64_then_class_and_command_as_le16()
    {
        Assert.Equal(Hex("0700000000000000 0100 0200"), TransportFrames.Header(7, 1, 2));
        Assert.Equal(Hex("0800000000000001 0500 0300"), TransportFrames.Header(0x0100000000000008, 5, 3));
        Assert.Equal(TransportFrames.HeaderSize, TransportFrames.Header(0, 0, 0).Length);
    }

    [Theory]
    [InlineData(TransportOpcode.DevList, 1, 1)]
    [InlineData(TransportOpcode.DevCreate, 1, 2)]
    [InlineData(TransportOpcode.DevInfo, 1, 4)]
    [InlineData(TransportOpcode.DrvFeaturesGet, 2, 3)]
    [InlineData(TransportOpcode.GenerationGet, 3, 3)]
    [InlineData(TransportOpcode.CfgWrite, 4, 2)]
    [InlineData(TransportOpcode.VqGet, 5, 5)]
    [InlineData(TransportOpcode.MsiGet, 6, 3)]
    [InlineData(TransportOpcode.Notify, 7, 2)]
    public void Each_command_splits_its_0xCCNN_number_into_class_and_command(TransportOpcode op, ushort cls, ushort command)
    {
        Assert.Equal(cls, TransportFrames.Class(op));
        Assert.Equal(command, TransportFrames.Command(op));
    }

    [Fact]
    public void Command_out_data_has_the_layouts_of_the_binding()
    {
        // DEV_CREATE: le32 virtio_device_id; le32 flags.
        Assert.Equal(Hex("01000000 00000000"), TransportFrames.DevCreate(1));
        // DRV_FEATURES_SET: le64 features[2], bits 0-63 first.
        Assert.Equal(Hex("2000000000800000 0100000000000000"), TransportFrames.Features(((UInt128)1 << 64) | (1UL << 47) | (1UL << 5)));
        // STATUS_SET: u8 status; u8 reserved[7].
        Assert.Equal(Hex("0f 00000000000000"), TransportFrames.Status(0x0f));
        // CFG_READ: le32 offset; le32 length. CFG_WRITE adds the bytes.
        Assert.Equal(Hex("06000000 02000000"), TransportFrames.CfgRead(6, 2));
        Assert.Equal(Hex("06000000 02000000 0100"), TransportFrames.CfgWrite(6, [1, 0]));
        // VQ_SET: le16 index; le16 size; le16 vector; le16 reserved; le64 desc; le64 driver; le64 device.
        Assert.Equal(Hex("0100 0001 0200 0000 0010000000000000 0020000000000000 0030000000000000"),
            TransportFrames.VqSet(1, 256, 2, 0x1000, 0x2000, 0x3000));
        // VQ_ENABLE: le16 index; le16 enable (1); u8 reserved[4].
        Assert.Equal(Hex("0100 0100 00000000"), TransportFrames.VqEnable(1));
        // MSI_SET: le16 vector; le16 flags (bit 0 masked); le32 msg_data; le64 msg_addr.
        Assert.Equal(Hex("0300 0100 21400000 0000e0fe00000000"), TransportFrames.MsiSet(3, 0xfee00000, 0x4021, masked: true));
        Assert.Equal(Hex("0300 0000 21400000 0000e0fe00000000"), TransportFrames.MsiSet(3, 0xfee00000, 0x4021, masked: false));
        // NOTIFY, MSI_GET, VQ_INFO/RESET/GET, CONFIG_VECTOR_SET: le16 value; u8 reserved[6].
        Assert.Equal(Hex("0200 000000000000"), TransportFrames.Index(2));
        Assert.Equal(Hex("ffff 000000000000"), TransportFrames.Index(0xffff));
    }

    [Fact]
    public void An_ack_of_zero_is_success_and_the_command_in_data_is_what_the_used_length_covers()
    {
        var written = Hex("00000000 01000000 00000000 eeeeeeee");
        var reply = TransportFrames.ParseReply(written, 12);
        Assert.True(reply.Ok);
        Assert.Equal(Hex("01000000 00000000"), reply.Result);
        Assert.Equal((ushort)0, reply.Status);
        Assert.Equal("OK", reply.Describe());
        Assert.Equal(1u, TransportFrames.ReadDevCreate(reply.Result));
    }

    [Fact]
    public void A_non_zero_ack_reads_status_and_qualifier_from_the_start_of_the_command_in_data()
    {
        // ack 1; EINVAL (22) / Q_INVALID_MEMBER (5).
        var reply = TransportFrames.ParseReply(Hex("01000000 1600 0500 eeeeeeee"), 8);
        Assert.False(reply.Ok);
        Assert.Equal((AdminStatus.Einval, AdminQualifier.InvalidMember), ((AdminStatus)reply.Status, (AdminQualifier)reply.Qualifier));
        Assert.Empty(reply.Result);
        Assert.StartsWith("EINVAL/INVALIDMEMBER", reply.Describe(), StringComparison.Ordinal);
        // ENOSPC (28) / Q_NORESOURCE (6): past max_vdevs.
        Assert.StartsWith("ENOSPC/NORESOURCE", TransportFrames.ParseReply(Hex("01000000 1c00 0600"), 8).Describe(), StringComparison.Ordinal);
        var exception = new TransportCommandException(TransportOpcode.DevDestroy, 0, reply);
        Assert.Equal(AdminStatus.Einval, exception.Status);
        Assert.Contains("DevDestroy on device 0 failed: EINVAL/INVALIDMEMBER", exception.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_reply_without_a_written_ack_or_status_is_an_error_not_a_success()
    {
        // The driver fills the writable part with 0xee: nothing the device did not write can read as 0.
        var none = TransportFrames.ParseReply(Hex("00000000 00000000"), 0);
        Assert.False(none.Ok);
        Assert.Contains("no ack written", none.Describe(), StringComparison.Ordinal);
        Assert.False(TransportFrames.ParseReply(Hex("000000"), 3).Ok);
        // An error ack with no room or length for the status reads 0xffff, not OK.
        var bare = TransportFrames.ParseReply(Hex("01000000 1600 0500"), 4);
        Assert.False(bare.Ok);
        Assert.Equal((ushort)0xffff, bare.Status);
        Assert.Equal((ushort)0xffff, bare.Qualifier);
        // A used length beyond the buffer counts only the buffer.
        Assert.Equal(4, TransportFrames.ParseReply(Hex("00000000 01020304"), 1000).Result.Length);
    }

    [Fact]
    public void Results_decode_with_the_layouts_of_the_binding()
    {
        // DEV_LIST: le32 count; le32 reserved; le32 ids[count].
        Assert.Equal([1u, 3u], TransportFrames.ReadDevList(Hex("02000000 00000000 01000000 03000000 eeeeeeee")));
        Assert.Empty(TransportFrames.ReadDevList(Hex("00000000 00000000")));
        // DEV_INFO: le32 virtio_device_id; le16 num_queues; le16 max_queue_size; le32 config_size; le16 max_vectors; le16 reserved.
        Assert.Equal(new VdevInfo(1, 2, 256, 12, 3), TransportFrames.ReadDevInfo(Hex("01000000 0200 0001 0c000000 0300 0000")));
        Assert.Equal(((UInt128)2 << 64) | (1UL << 32), TransportFrames.ReadFeatures(Hex("0000000001000000 0200000000000000")));
        Assert.Equal(0x0f, TransportFrames.ReadStatus(Hex("0f 00000000000000")));
        Assert.Equal(9u, TransportFrames.ReadGeneration(Hex("09000000")));
        Assert.Equal(new VqInfo(256, 1, 2), TransportFrames.ReadVqInfo(Hex("0001 0100 0200 0000")));
        // VQ_GET: virtio_dev_part_vq_cfg.
        Assert.Equal(new VqConfig(256, 1, 1, 0x1000, 0x2000, 0x3000),
            TransportFrames.ReadVqGet(Hex("0001 0100 0100 0000 0010000000000000 0020000000000000 0030000000000000")));
        Assert.Equal((ushort)2, TransportFrames.ReadConfigVector(Hex("0200 000000000000")));
        // MSI_GET: le64 address; le32 data; u8 flags (bit 0 mask, bit 1 pending); u8 reserved[3].
        Assert.Equal(new MsiVector(0xfee00000, 0x4021, false, true), TransportFrames.ReadMsiGet(Hex("0000e0fe00000000 21400000 02 000000")));
        Assert.Equal(new MsiVector(0, 0, true, true), TransportFrames.ReadMsiGet(Hex("0000000000000000 00000000 03 000000")));
        // NOTIFY_INFO: u8 bar; u8 reserved[3]; le32 notify_off_multiplier; le64 base_offset.
        Assert.Equal(new NotifyInfo(2, 4, 0x3000), TransportFrames.ReadNotifyInfo(Hex("02 000000 04000000 0030000000000000")));
    }

    [Fact]
    public void A_result_shorter_than_its_layout_or_a_list_longer_than_its_bytes_is_refused()
    {
        Assert.Throws<FrontEndException>(() => TransportFrames.ReadDevList(Hex("03000000 00000000 01000000 02000000")));
        Assert.Throws<FrontEndException>(() => TransportFrames.ReadDevList(Hex("ffffffff 00000000")));
        Assert.Throws<FrontEndException>(() => TransportFrames.ReadDevList(Hex("000000")));
        Assert.Throws<FrontEndException>(() => TransportFrames.ReadDevCreate(Hex("0100")));
        Assert.Throws<FrontEndException>(() => TransportFrames.ReadMsiGet(Hex("0000e0fe00000000 21400000")));
        Assert.Throws<FrontEndException>(() => TransportFrames.ReadVqGet(new byte[31]));
        Assert.Throws<FrontEndException>(() => TransportFrames.ReadStatus([]));
    }

    [Fact]
    public void The_owner_driver_sets_up_rings_through_the_admin_queue_and_the_transport_queue()
    {
        // Admin queue at 3, transport queue right after it.
        Assert.Equal(5, OwnerDriver.QueueCountFor(new OwnerInfo(3, 1, 4, 1, 2, 0, 8, 0)));
        // No transport queue: its index is not looked at.
        Assert.Equal(4, OwnerDriver.QueueCountFor(new OwnerInfo(3, 1, 40, 0, 2, 0, 0, 0)));
        // Whichever ends later counts.
        Assert.Equal(6, OwnerDriver.QueueCountFor(new OwnerInfo(4, 2, 2, 1, 2, 0, 0, 0)));
    }
}
