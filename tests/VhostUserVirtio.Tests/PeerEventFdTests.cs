using System.IO.Pipes;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Eventfds adopted from a peer: only plain eventfds are taken, and reading or signalling one never
/// waits, even after the peer cleared O_NONBLOCK on its copy (the flag is shared by both copies).
/// The peer's copy here is a duplicate of ours: same open file, as after SCM_RIGHTS.
/// </summary>
[Trait("tier", "unit")]
public sealed class PeerEventFdTests
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(10);

    private static EventFd Adopt(EventFd peerCopy)
    {
        var adopted = EventFd.AdoptPeer(peerCopy.Descriptor.Duplicate(), out string? refusal);
        Assert.True(adopted != null, refusal);
        return adopted;
    }

    [Fact]
    public async Task Draining_an_empty_peer_eventfd_the_peer_made_blocking_returns_at_once()
    {
        using var peer = new EventFd();
        using var adopted = Adopt(peer);
        peer.Descriptor.SetNonBlocking(false);

        var drain = Task.Factory.StartNew(adopted.Drain, TaskCreationOptions.LongRunning);
        Assert.Equal(0UL, await drain.WaitAsync(Deadline));

        Assert.True(peer.Write(3));
        Assert.Equal(3UL, adopted.Drain());
    }

    [Fact]
    public async Task Signalling_a_full_peer_eventfd_the_peer_made_blocking_returns_at_once()
    {
        using var peer = new EventFd();
        using var adopted = Adopt(peer);
        peer.Descriptor.SetNonBlocking(false);
        Assert.True(peer.Write(0xffff_ffff_ffff_fffe));

        try
        {
            var signal = Task.Factory.StartNew(adopted.Signal, TaskCreationOptions.LongRunning);
            await signal.WaitAsync(Deadline);
            // The kernel's own signal path saturates the counter instead of waiting for room.
            if (EventFd.PeerFallbackReason == null)
                Assert.Equal(ulong.MaxValue, peer.Drain());
        }
        finally
        {
            peer.Descriptor.SetNonBlocking(true);
            peer.Drain(); // lets a signal stuck in write(2) finish
        }
        Assert.True(adopted.Signal());
        Assert.Equal(1UL, peer.Drain());
    }

    [Fact]
    public void Signals_keep_arriving_past_the_size_of_the_completion_ring()
    {
        using var peer = new EventFd();
        using var adopted = Adopt(peer);
        for (int i = 0; i < 10_000; i++)
            Assert.True(adopted.Signal(), $"signal {i} failed");
        Assert.Equal(10_000UL, peer.Drain());
    }

    [Fact]
    public void Pipes_sockets_files_and_semaphore_eventfds_are_not_adopted_and_are_closed()
    {
        using var pipe = new AnonymousPipeServerStream(PipeDirection.Out);
        var (socket, socketPeer) = UnixSocket.CreatePair();
        using var _ = socket;
        using var __ = socketPeer;
        string path = Path.GetTempFileName();
        try
        {
            using var file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
            using var semaphore = EventFd.CreateSemaphore();
            var cases = new (FileDescriptor Fd, string Expected)[]
            {
                (Dup((int)pipe.ClientSafePipeHandle.DangerousGetHandle()), "a pipe"),
                (socket.Descriptor.Duplicate(), "a socket"),
                (Dup((int)file.DangerousGetHandle()), "a file or device"),
                (semaphore.Descriptor.Duplicate(), "semaphore mode"),
            };
            foreach (var (fd, expected) in cases)
            {
                Assert.Null(EventFd.AdoptPeer(fd, out string? refusal));
                Assert.Contains(expected, refusal);
                Assert.True(fd.IsClosed, $"refused descriptor ({expected}) left open");
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static FileDescriptor Dup(int fd)
    {
        using var borrowed = new BorrowedFd(fd);
        return borrowed.Descriptor.Duplicate();
    }

    /// <summary>A FileDescriptor over a number someone else owns, released without closing it.</summary>
    private sealed class BorrowedFd(int fd) : IDisposable
    {
        public FileDescriptor Descriptor { get; } = new(fd);

        public void Dispose() => Descriptor.SetHandleAsInvalid();
    }
}
