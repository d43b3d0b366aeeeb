namespace VhostUserVirtio.Backend;

/// <summary>
/// The two vhost-user requests that only make sense for a network device (SEND_RARP, NET_SET_MTU).
/// A device that offers the RARP or NET_MTU protocol feature implements this.
/// </summary>
public interface INetDeviceControl
{
    /// <summary>After migration: broadcast a RARP for <paramref name="mac"/> so switches relearn where the guest is.</summary>
    void AnnounceMac(ReadOnlySpan<byte> mac);

    /// <summary>The MTU the front end configured for the device (VIRTIO_NET_F_MTU). False if unacceptable.</summary>
    bool SetMtu(uint mtu);
}
