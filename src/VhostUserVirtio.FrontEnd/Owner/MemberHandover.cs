using System.Diagnostics;
using System.IO.Pipelines;
using System.Text;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.FrontEnd.Owner;

/// <summary>A step of a handover, with the stream bytes moved so far.</summary>
public sealed record HandoverProgress(string Stage, long Bytes = 0);

/// <summary>What a handover did: the socket path that moved, the stream, and how long the member was stopped.</summary>
public sealed record HandoverResult(string SocketPath, long Bytes, string SourceProfile, string TargetProfile, TimeSpan Stopped, TimeSpan Streaming);

/// <summary>A member's vhost-user socket as its owner reports it (MEMBER_SOCKET QUERY).</summary>
public sealed record MemberSocketState(string Path, bool Listening, bool Connected, bool Stopped);

/// <summary>MEMBER_SOCKET (0x43, docs/owner-binding.md "Back-end handover") from the owner driver's side.</summary>
public static class MemberSocket
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov;

    public static MemberSocketState Query(OwnerDriver owner, ulong member)
    {
        var r = owner.Admin.Execute((ushort)AdminOpcode.MemberSocket, SrIov, member, [MemberSocketData.Query, 0, 0, 0, 0, 0, 0, 0], 8 + 108);
        if (!r.Ok || r.Result.Length < 8)
            throw new FrontEndException($"member {member}: MEMBER_SOCKET QUERY failed: {r.Describe()}");
        byte flags = r.Result[0];
        return new MemberSocketState(Encoding.UTF8.GetString(r.Result.AsSpan(8)), (flags & MemberSocketData.Listening) != 0,
            (flags & MemberSocketData.Connected) != 0, (flags & MemberSocketData.Stopped) != 0);
    }

    /// <summary>The member (stopped, no front end) starts listening on <paramref name="path"/>, replacing whoever listens there.</summary>
    public static AdminReply TakeOver(OwnerDriver owner, ulong member, string path) =>
        owner.Admin.Execute((ushort)AdminOpcode.MemberSocket, SrIov, member, [MemberSocketData.TakeOver, 0, 0, 0, 0, 0, 0, 0, .. Encoding.UTF8.GetBytes(path)], 0);

    /// <summary>The member (stopped) disconnects its front end and closes its socket.</summary>
    public static AdminReply Release(OwnerDriver owner, ulong member) =>
        owner.Admin.Execute((ushort)AdminOpcode.MemberSocket, SrIov, member, [MemberSocketData.Release, 0, 0, 0, 0, 0, 0, 0], 0);
}

/// <summary>
/// Moves a member from one back end to another while its front end (QEMU with <c>reconnect=</c>)
/// stays up: the target member is stopped, the source member frozen, its device parts stream flows
/// through a <see cref="Pipe"/> from the source owner's admin queue to the target owner's (the pipe's
/// thresholds hold the reader back-pressure on the source), the target takes the stream, takes the
/// source's socket path over, the source lets its front end go, and the target resumes. The front
/// end reconnects to the same path and finds the member as it was: MAC, filters, link, trust, MSI-X
/// vectors and counters; ring positions come from guest memory (next avail = used index), which the
/// freeze made exact. Any failure before the socket moves resumes both members as they were.
/// </summary>
public static class MemberHandover
{
    /// <summary>The pipe between the owners: the source waits once 4 chunks are unread, and goes on when half of them are.</summary>
    public static readonly PipeOptions PipeOptions = new(
        pauseWriterThreshold: 4 * MemberStateChannel.ChunkSize, resumeWriterThreshold: 2 * MemberStateChannel.ChunkSize,
        useSynchronizationContext: false);

    public static async Task<HandoverResult> RunAsync(OwnerDriver source, ulong sourceMember, OwnerDriver target, ulong targetMember,
        IProgress<HandoverProgress>? progress = null, CancellationToken cancel = default)
    {
        void Report(string stage, long bytes = 0) => progress?.Report(new HandoverProgress(stage, bytes));

        var from = MemberSocket.Query(source, sourceMember);
        var to = MemberSocket.Query(target, targetMember);
        if (!from.Listening)
            throw new FrontEndException($"source member {sourceMember} has no socket to hand over (released already?)");
        if (to.Connected)
            throw new FrontEndException($"target member {targetMember} has a front end connected on {to.Path}; it must be free to take a member over");
        if (from.Path == to.Path)
            throw new FrontEndException($"source and target are the same socket {from.Path}");

        var sink = MemberStateSink.For(target, targetMember);
        var pump = MemberStateSource.For(source, sourceMember);
        Report($"target member {targetMember}: stopping ({sink.Profile})");
        sink.Stop();
        var stopped = Stopwatch.StartNew();
        bool socketMoved = false;
        long bytes = 0;
        TimeSpan streaming;
        try
        {
            Report($"source member {sourceMember} on {from.Path}: freezing ({pump.Profile})");
            pump.Stop();

            var pipe = new Pipe(PipeOptions);
            var started = stopped.Elapsed;
            var reading = Task.Run(() => pump.PumpAsync(pipe.Writer, n => Interlocked.Exchange(ref bytes, n), cancel), cancel);
            var writing = Task.Run(() => sink.ConsumeAsync(pipe.Reader, cancel), cancel);
            await Task.WhenAll(reading, writing).ConfigureAwait(false);
            streaming = stopped.Elapsed - started;
            Report("device parts streamed", bytes);

            sink.Commit();
            Report($"target member {targetMember}: state taken");
            var taken = MemberSocket.TakeOver(target, targetMember, from.Path);
            if (!taken.Ok)
                throw new FrontEndException($"target member {targetMember} could not take {from.Path} over: {taken.Describe()}");
            socketMoved = true;
            Report($"target member {targetMember}: listening on {from.Path}");
        }
        catch when (!socketMoved)
        {
            // Nothing moved: both members go back to running as they were.
            Report("failed; resuming both members as they were");
            try { sink.Abort(); } catch (FrontEndException) { }
            try { pump.Resume(); } catch (FrontEndException) { }
            throw;
        }

        var released = MemberSocket.Release(source, sourceMember);
        if (!released.Ok)
            throw new FrontEndException($"the target listens on {from.Path} now, but source member {sourceMember} could not release its front end: " +
                $"{released.Describe()}; it stays frozen and its front end will not reconnect until it is disconnected");
        Report($"source member {sourceMember}: front end disconnected; it reconnects to the target");
        sink.Resume();
        stopped.Stop();
        Report($"target member {targetMember}: running", bytes);
        return new HandoverResult(from.Path, bytes, pump.Profile, sink.Profile, stopped.Elapsed, streaming);
    }
}
