namespace VhostUserVirtio.Devices.Net;

/// <summary>virtio-net numbers (VIRTIO 1.x 5.1): feature bits, config layout, header, control commands.</summary>
public static class VirtioNet
{
    public const int DeviceId = 1;

    // Feature bits.
    public const int FCsum = 0;
    public const int FGuestCsum = 1;
    public const int FMtu = 3;
    public const int FMac = 5;
    public const int FGso = 6;
    public const int FGuestTso4 = 7;
    public const int FGuestTso6 = 8;
    public const int FGuestEcn = 9;
    public const int FHostTso4 = 11;
    public const int FHostTso6 = 12;
    public const int FHostEcn = 13;
    public const int FMrgRxbuf = 15;
    public const int FStatus = 16;
    public const int FCtrlVq = 17;
    public const int FCtrlRx = 18;
    public const int FCtrlVlan = 19;
    public const int FGuestAnnounce = 21;
    public const int FMq = 22;
    public const int FCtrlMacAddr = 23;

    // Config space offsets.
    public const int ConfigMac = 0;
    public const int ConfigStatus = 6;
    public const int ConfigMaxPairs = 8;
    public const int ConfigMtu = 10;
    /// <summary>mac, status, max_virtqueue_pairs, mtu, speed, duplex, and the RSS fields (not offered, read as 0).</summary>
    public const int ConfigSize = 24;

    public const ushort StatusLinkUp = 1;
    public const ushort StatusAnnounce = 2;

    /// <summary>struct virtio_net_hdr with num_buffers (VERSION_1 or MRG_RXBUF).</summary>
    public const int HeaderSize = 12;
    /// <summary>The legacy header without num_buffers (neither VERSION_1 nor MRG_RXBUF).</summary>
    public const int LegacyHeaderSize = 10;
    public const int HeaderNumBuffersOffset = 10;
    public const byte HdrFlagNeedsCsum = 1;
    public const byte HdrFlagDataValid = 2;
    public const byte GsoNone = 0;
    public const byte GsoTcpV4 = 1;
    public const byte GsoUdp = 3;
    public const byte GsoTcpV6 = 4;
    public const byte GsoEcn = 0x80;
    // Header field offsets: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (little endian).
    public const int HeaderFlagsOffset = 0;
    public const int HeaderGsoTypeOffset = 1;
    public const int HeaderHdrLenOffset = 2;
    public const int HeaderGsoSizeOffset = 4;
    public const int HeaderCsumStartOffset = 6;
    public const int HeaderCsumOffsetOffset = 8;

    public const int EthernetHeader = 14;
    public const int MinMtu = 68;
    public const int MaxMtu = 65535;

    // Control queue (5.1.6.5): classes and commands, and the ack byte.
    public const byte CtrlRx = 0;
    public const byte CtrlRxPromisc = 0;
    public const byte CtrlRxAllMulti = 1;
    public const byte CtrlRxAllUni = 2;
    public const byte CtrlRxNoMulti = 3;
    public const byte CtrlRxNoUni = 4;
    public const byte CtrlRxNoBcast = 5;
    public const byte CtrlMac = 1;
    public const byte CtrlMacTableSet = 0;
    public const byte CtrlMacAddrSet = 1;
    public const byte CtrlAnnounce = 3;
    public const byte CtrlAnnounceAck = 0;
    public const byte CtrlMq = 4;
    public const byte CtrlMqVqPairsSet = 0;
    public const byte Ok = 0;
    public const byte Err = 1;

    public static int ReceiveQueue(int pair) => 2 * pair;
    public static int TransmitQueue(int pair) => 2 * pair + 1;
}
