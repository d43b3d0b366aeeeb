using VhostUserVirtio.Devices.Switch;

namespace VhostUserVirtio.Tests.Support;

/// <summary>A switch port that counts what it is given; safe to deliver to from several workers at once.</summary>
public sealed class CountingPort(string name) : ISwitchPort
{
    private int _received;

    public string Name => name;
    public PortCounters Counters { get; } = new();
    public int Received => Volatile.Read(ref _received);

    public bool Deliver(in Frame frame, Mac destination, out DropReason reason)
    {
        Interlocked.Increment(ref _received);
        reason = default;
        return true;
    }

    public void FlushNotifications() { }

    /// <summary>A 60-byte frame from <paramref name="src"/> to <paramref name="dst"/>, written into <paramref name="buffer"/>.</summary>
    public static byte[] Ethernet(Mac dst, Mac src, byte[]? buffer = null)
    {
        var f = buffer ?? new byte[60];
        dst.Write(f);
        src.Write(f.AsSpan(6));
        f[12] = 0x88;
        f[13] = 0xb5;
        return f;
    }
}
