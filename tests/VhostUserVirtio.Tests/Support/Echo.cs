using System.Text;
using VhostUserVirtio.FrontEnd;

namespace VhostUserVirtio.Tests.Support;

/// <summary>Round-trips a payload through an echo queue: one readable buffer, one writable buffer.</summary>
public static class Echo
{
    public static byte[] RoundTrip(FrontEndSession s, int queue, byte[] payload, bool indirect = false, int timeoutMs = 10_000)
    {
        var q = s.Queues[queue];
        ulong src = s.Ram.Allocate((ulong)Math.Max(payload.Length, 1));
        ulong dst = s.Ram.Allocate((ulong)Math.Max(payload.Length, 1));
        payload.CopyTo(s.Ram.Span(src, payload.Length));
        s.Ram.Span(dst, payload.Length).Clear();
        BufferSpec[] chain = { new(src, (uint)payload.Length, false), new(dst, (uint)payload.Length, true) };
        ushort head = indirect ? q.AddIndirectChain(chain) : q.AddChain(chain);
        q.Notify();
        var (id, len) = q.WaitUsed(timeoutMs);
        Assert.Equal(head, id);
        Assert.Equal((uint)payload.Length, len);
        return s.Ram.Span(dst, payload.Length).ToArray();
    }

    public static byte[] Text(string s) => Encoding.ASCII.GetBytes(s);

    /// <summary>Proves the device at <paramref name="socket"/> still works end to end with a fresh front end.</summary>
    public static void AssertDeviceWorks(string socket)
    {
        using var s = FrontEndSession.Start(socket);
        var payload = Text("still alive " + Guid.NewGuid());
        Assert.Equal(payload, RoundTrip(s, 0, payload));
    }
}
