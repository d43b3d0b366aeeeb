using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Front ends that abuse the socket itself rather than the messages: descriptors dribbled in with
/// every byte, the daemon's descriptors exhausted, replies never read. Each costs the hostile front
/// end its own connection at most; the daemon keeps accepting and serving everyone else.
/// </summary>
[Trait("tier", "daemon")]
public sealed class HostileSocketTests : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-s-" + Guid.NewGuid().ToString("N")[..12]);

    public HostileSocketTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private DaemonProcess StartDaemon(string socket)
    {
        var daemon = DaemonProcess.Start([$"--socket-path={socket}"]);
        daemon.WaitUntil(() => File.Exists(socket) && daemon.Output.Contains("ready:"), Deadline, "the socket");
        return daemon;
    }

    private static bool WaitForEndOfStream(UnixSocket socket, int timeoutMs = 10_000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        var fds = new List<FileDescriptor>();
        try
        {
            while (socket.Descriptor.WaitReadable((int)Math.Max(1, deadline - Environment.TickCount64)))
            {
                int n = socket.Receive(new byte[256], fds, out _);
                foreach (var fd in fds) fd.Dispose();
                fds.Clear();
                if (n == 0)
                    return true;
            }
            return false;
        }
        catch (NativeException)
        {
            return true; // reset by the back end
        }
    }

    private static List<string> ThreadNames(int pid) =>
        Directory.EnumerateDirectories($"/proc/{pid}/task").Select(t =>
        {
            try { return File.ReadAllText(Path.Combine(t, "comm")).TrimEnd('\n'); }
            catch (IOException) { return ""; } // the thread just ended
        }).ToList();

    [Fact]
    public void Descriptors_sent_with_every_byte_of_a_message_never_pile_up_in_the_daemon()
    {
        var socket = Path.Combine(_dir, "vhost.sock");
        using var daemon = StartDaemon(socket);
        int baseline = ProcessFds.Count(daemon.Id);

        // A header announcing the largest payload, so the message stays unfinished for 4 KiB of bytes.
        var bytes = new byte[MessageHeader.Length + 200];
        new MessageHeader((uint)FrontendRequest.SetOwner, MessageHeader.Version, MessageHeader.MaxPayload).Write(bytes);
        using var attached = new EventFd();
        int[] eight = Enumerable.Repeat(attached.Descriptor.Number, MessageHeader.MaxFds).ToArray();
        using var hog = UnixSocket.Connect(socket);
        int peak = 0;
        for (int i = 0; i < bytes.Length; i++)
        {
            try
            {
                hog.Send(bytes.AsSpan(i, 1), eight);
            }
            catch (NativeException)
            {
                break; // the daemon hung up
            }
            peak = Math.Max(peak, ProcessFds.Count(daemon.Id) - baseline);
        }

        Assert.True(WaitForEndOfStream(hog), "the daemon kept a front end whose descriptors came with later bytes of a message");
        peak = Math.Max(peak, ProcessFds.Count(daemon.Id) - baseline);
        // The connection itself, one message's worth of descriptors, and a little for the runtime.
        Assert.True(peak <= 1 + MessageHeader.MaxFds + 3, $"the daemon held {peak} more descriptors than before the hog came");
        daemon.WaitUntil(() => daemon.Output.Contains("descriptors were sent after the first bytes of a message"), Deadline, "the reason to be logged");
        NetCheck.AssertDeviceUp(socket);
    }

    [Fact]
    public void Accepting_backs_off_while_descriptors_are_exhausted_and_serves_again_once_one_is_free()
    {
        var socket = Path.Combine(_dir, "vhost.sock");
        using var daemon = StartDaemon(socket);
        // A .NET process out of descriptors aborts when the runtime next starts a thread (each takes a
        // pipe for a moment): let the daemon's timer thread start, and keep the shortage short, well
        // before the status timer's first tick needs a thread-pool thread.
        daemon.WaitUntil(() => ThreadNames(daemon.Id).Contains(".NET Timer"), Deadline, "the daemon's timer thread");
        // No descriptor number left below the limit: the daemon can open nothing more.
        daemon.SetDescriptorLimit(ProcessFds.LowestFree(daemon.Id));
        int logged = daemon.Output.Length;
        using (var newcomer = UnixSocket.Connect(socket)) // queued, and accepting it fails with EMFILE
        {
            daemon.WaitUntil(() => daemon.Output[logged..].Contains("accept4"), Deadline, "a failed accept to be logged");
            Thread.Sleep(2000);
            var log = daemon.Output[logged..];
            int lines = log.Split('\n').Count(l => l.Contains("accept4"));
            Assert.True(lines <= 10, $"{lines} lines about failed accepts in 2 s:\n{log[..Math.Min(4000, log.Length)]}");
        }
        Assert.False(daemon.HasExited, "the daemon died:\n" + daemon.Output);
        daemon.SetDescriptorLimit(4096); // descriptors free again, as when a front end leaves
        try
        {
            NetCheck.AssertDeviceUp(socket);
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            Assert.Fail($"no new front end could use the device ({e.Message}):\n{daemon.Output}");
        }
    }

    [Fact]
    public async Task A_front_end_that_never_reads_its_replies_holds_up_no_other_device()
    {
        using var backend = new EchoBackend(devices: 2);
        using var stop = new CancellationTokenSource();
        int connections = 0;
        int stalled = 0;
        var request = new byte[MessageHeader.Length * 64];
        for (int i = 0; i < 64; i++)
            new MessageHeader((uint)FrontendRequest.GetFeatures, MessageHeader.Version, 0).Write(request.AsSpan(i * MessageHeader.Length));

        // Sends GET_FEATURES for ever and reads nothing; if the back end drops it, it comes back.
        var hog = Task.Factory.StartNew(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                using var s = UnixSocket.Connect(backend.SocketPath(0), nonBlocking: true);
                Interlocked.Increment(ref connections);
                int offset = 0;
                try
                {
                    while (!stop.IsCancellationRequested)
                    {
                        int n = s.TrySend(request.AsSpan(offset));
                        offset = (offset + n) % MessageHeader.Length;
                        if (n == 0)
                        {
                            Volatile.Write(ref stalled, 1); // the back end stopped taking requests
                            Thread.Sleep(10);
                        }
                    }
                }
                catch (NativeException) { } // dropped
            }
        }, TaskCreationOptions.LongRunning);
        try
        {
            Assert.True(EchoBackend.WaitUntil(() => Volatile.Read(ref stalled) == 1), "the hog never filled its socket");

            var other = Task.Factory.StartNew(() =>
            {
                using var s = FrontEndSession.Start(backend.SocketPath(1));
                for (int i = 0; i < 30; i++)
                    s.Connection.GetFeatures();
                var payload = Echo.Text("served while the hog sits on its replies");
                Assert.Equal(payload, Echo.RoundTrip(s, 0, payload));
            }, TaskCreationOptions.LongRunning);
            // Generous for a handshake; a control loop that waits on the hog needs seconds per message.
            await other.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(1, Volatile.Read(ref connections));
            Assert.True(backend.Endpoints[0].IsConnected, "the hog was dropped instead of merely left waiting");
        }
        finally
        {
            stop.Cancel();
            await hog.WaitAsync(Deadline);
        }
    }
}
