using System.Buffers.Binary;
using System.IO.Pipes;
using Microsoft.Win32.SafeHandles;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Kick, call and err descriptors from a hostile front end. Anything but a plain eventfd is refused
/// and closed; an eventfd the front end made blocking and filled to its maximum count stalls neither
/// the worker that signals it nor the control loop, so every other device keeps working.
/// </summary>
[Trait("tier", "unit")]
public sealed class HostileDescriptorTests : IDisposable
{
    private const ulong MaxCount = 0xffff_ffff_ffff_fffe; // the most a write(2) can leave in an eventfd

    // One worker: both devices' rings share it, so a stalled worker would stop the other device too.
    private readonly EchoBackend _backend = new(devices: 3, workers: 1);
    private readonly FrontEndSession _s;
    private readonly FrontEndSession _other;
    private readonly List<EventFd> _hostile = new();

    public HostileDescriptorTests()
    {
        _other = FrontEndSession.Start(_backend.SocketPath(1));
        _s = FrontEndSession.Start(_backend.SocketPath(0));
    }

    public void Dispose()
    {
        // Empty the full counters first, so that a back end stuck writing one gets going and can stop.
        foreach (var e in _hostile)
        {
            e.Descriptor.SetNonBlocking(true);
            e.Drain();
        }
        _s.Dispose();
        _other.Dispose();
        _backend.Dispose();
        foreach (var e in _hostile)
            e.Dispose();
    }

    public static TheoryData<string, FrontendRequest> NotEventFds()
    {
        var data = new TheoryData<string, FrontendRequest>();
        foreach (var kind in new[] { "pipe", "socket", "file" })
            foreach (var request in new[] { FrontendRequest.SetVringKick, FrontendRequest.SetVringCall, FrontendRequest.SetVringErr })
                data.Add(kind, request);
        return data;
    }

    [Theory]
    [MemberData(nameof(NotEventFds))]
    public void A_descriptor_that_is_not_an_eventfd_is_refused_and_closed(string kind, FrontendRequest request)
    {
        var sent = Descriptor.Open(kind);
        try
        {
            using (sent)
            {
                _s.Connection.SendRaw((uint)request, MessageHeader.Version | MessageHeader.NeedReplyFlag,
                    BitConverter.GetBytes(VringFile.Encode(0, false)), [sent.Fd]);
                var (_, body) = _s.Connection.ReadReply(request);
                Assert.NotEqual(0UL, BinaryPrimitives.ReadUInt64LittleEndian(body));
            }
            Assert.True(_backend.Logs.WaitForWarning($"{request} refused: the descriptor is a {(kind == "file" ? "file or device" : kind)}"),
                "no refusal naming what the descriptor is:\n" + _backend.Logs.Dump());
            Assert.True(ProcessFds.WaitUntilNoneRefersTo(sent.Target), $"the refused {kind} ({sent.Target}) is still open in the back end");
        }
        finally
        {
            if (sent.FilePath != null)
                File.Delete(sent.FilePath);
        }
        AssertEveryoneServed();
    }

    [Fact]
    public void A_full_blocking_eventfd_as_call_descriptor_stalls_no_worker()
    {
        var call = Hostile();
        _s.Connection.SetVringCall(0, call);
        MakeBlockingAndFull(call);

        // The device returns the buffer and interrupts the driver through the full call descriptor.
        var payload = Echo.Text("interrupt into a full counter");
        Assert.Equal(payload, Echo.RoundTrip(_s, 0, payload));
        AssertEveryoneServed();
    }

    [Fact]
    public void A_full_blocking_eventfd_as_err_descriptor_stalls_not_the_control_loop()
    {
        var err = Hostile();
        _s.Connection.SetVringErr(0, err);
        MakeBlockingAndFull(err);

        // Ring addresses outside the memory table: the ring breaks as the control loop restarts it,
        // and the control loop signals the error descriptor.
        var addr = new byte[VringAddress.Size];
        new VringAddress(0, 0, 0x7fff_0000_0000, 0x7fff_0001_0000, 0x7fff_0002_0000, 0).Write(addr);
        _s.Connection.SendRaw((uint)FrontendRequest.SetVringAddr, MessageHeader.Version, addr);
        Assert.True(_backend.Logs.WaitForWarning("not in the memory table"));
        Echo.AssertDeviceWorks(_backend.SocketPath(2));
        var payload = Echo.Text("other device unaffected");
        Assert.Equal(payload, Echo.RoundTrip(_other, 0, payload));
    }

    [Fact]
    public void A_full_blocking_eventfd_as_err_descriptor_of_a_ring_the_guest_breaks_stalls_no_worker()
    {
        var err = Hostile();
        _s.Connection.SetVringErr(0, err);
        MakeBlockingAndFull(err);

        var q = _s.Queues[0];
        q.SetAvailIndex((ushort)(q.AvailIndex + q.Size + 1)); // more buffers than the ring holds: broken
        q.Notify();
        Assert.True(_backend.Logs.WaitForWarning("guest broke the ring rules"));
        AssertEveryoneServed(victimQueue: 1);
    }

    private EventFd Hostile()
    {
        var e = new EventFd();
        _hostile.Add(e);
        return e;
    }

    /// <summary>
    /// What a hostile front end does with its copy after sending it: O_NONBLOCK belongs to the open
    /// file, so clearing it makes the back end's copy blocking too; then the counter is filled.
    /// </summary>
    private static void MakeBlockingAndFull(EventFd e)
    {
        e.Descriptor.SetNonBlocking(false);
        Assert.True(e.Write(MaxCount));
    }

    /// <summary>The victim's other ring, the other device (same worker) and a fresh front end (control loop) all work.</summary>
    private void AssertEveryoneServed(int victimQueue = 0)
    {
        var payload = Echo.Text("victim still served");
        Assert.Equal(payload, Echo.RoundTrip(_s, victimQueue, payload));
        payload = Echo.Text("other device on the same worker");
        Assert.Equal(payload, Echo.RoundTrip(_other, 1, payload));
        Echo.AssertDeviceWorks(_backend.SocketPath(2));
    }

    /// <summary>A descriptor of some kind to send, and what /proc says it is (to find any copy left open).</summary>
    private sealed class Descriptor : IDisposable
    {
        private readonly List<IDisposable> _owned = new();

        private Descriptor(int fd, string target, string? filePath, params IDisposable[] owned)
        {
            Fd = fd;
            Target = target;
            FilePath = filePath;
            _owned.AddRange(owned);
        }

        public int Fd { get; }
        public string Target { get; }
        /// <summary>The regular file's path (deleted by the test once nobody should hold it: deleting renames the /proc link).</summary>
        public string? FilePath { get; }

        public static Descriptor Open(string kind)
        {
            switch (kind)
            {
                case "pipe":
                {
                    // The read end, with its writer closed once sent: readable (end of file) for ever.
                    var server = new AnonymousPipeServerStream(PipeDirection.Out);
                    var read = server.ClientSafePipeHandle;
                    int fd = (int)read.DangerousGetHandle();
                    return new Descriptor(fd, Link(fd), null, read, server);
                }
                case "socket":
                {
                    var (a, b) = UnixSocket.CreatePair();
                    return new Descriptor(a.Descriptor.Number, Link(a.Descriptor.Number), null, a, b);
                }
                default:
                {
                    string path = Path.Combine(Path.GetTempPath(), "vuv-file-" + Guid.NewGuid().ToString("N"));
                    SafeFileHandle file = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);
                    int fd = (int)file.DangerousGetHandle();
                    return new Descriptor(fd, Link(fd), path, file);
                }
            }
        }

        private static string Link(int fd) => new FileInfo($"/proc/self/fd/{fd}").LinkTarget!;

        public void Dispose()
        {
            foreach (var o in _owned)
                o.Dispose();
        }
    }
}
