using System.Buffers;
using System.IO.Pipelines;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The back-end handover between two device groups, driven by the owner-driver library as
/// `vhost-virtio migrate-member` drives it: the member's state moves through the admin queues of both
/// owners, its socket path moves to the target, and its front end reconnects there.
/// </summary>
[Trait("tier", "unit")]
public sealed class MemberHandoverTests
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(15);

    private static OwnerDriver Owner(GroupBackend group)
    {
        var owner = OwnerDriver.Connect(group.Socket(0));
        owner.UseAllCommands();
        return owner;
    }

    private static void Ctrl(OwnerDriver owner, ulong member, byte cls, byte command, params byte[] data)
    {
        var r = owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, SrIov, member, [cls, command, 0, 0, 0, 0, 0, 0, .. data], 0);
        Assert.True(r.Ok, r.Describe());
    }

    private static bool Eventually(Func<bool> condition) => EchoBackend.WaitUntil(condition, (int)Deadline.TotalMilliseconds);

    [Theory]
    [InlineData(AdminProfile.Spec, AdminProfile.Spec)]
    [InlineData(AdminProfile.Spec, AdminProfile.Seed)]
    [InlineData(AdminProfile.Seed, AdminProfile.Spec)]
    [InlineData(AdminProfile.Seed, AdminProfile.Seed)]
    public async Task A_vfs_state_and_socket_path_move_to_a_vf_of_another_group_and_its_front_end_reconnects_there(AdminProfile from, AdminProfile to)
    {
        using var a = new GroupBackend(vfs: 2, o => o with { AdminProfile = from });
        using var b = new GroupBackend(vfs: 2, o => o with { AdminProfile = to });
        using var ownerA = Owner(a);
        using var ownerB = Owner(b);
        // The source VF's state differs from the target VF's in every owner-set respect.
        var vectors = ownerA.Admin.Execute((ushort)AdminOpcode.MemberResource, SrIov, 1, [1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0], 16);
        Assert.True(vectors.Ok, vectors.Describe());
        Ctrl(ownerA, 1, 0x81, 0, 0);          // link down
        Ctrl(ownerA, 1, 0x80, 0, 1);          // trusted
        Ctrl(ownerA, 1, 0, 0, 0);             // promiscuous off
        Ctrl(ownerA, 1, 0, 1, 0);             // all-multicast off
        Ctrl(ownerA, 1, 1, 0, [1, 0, 0, 0, 0x02, 0xaa, 0, 0, 0, 1, 1, 0, 0, 0, 0x01, 0x00, 0x5e, 0, 0, 7]); // 1 unicast, 1 multicast
        var source = a.Member(1).Device;
        var filter = source.Filter.ToString(); // the source's device is reset once its front end is let go
        Assert.Equal("mac 02:56:56:00:00:01, 1 uc, 1 mc", filter);
        using var guest = new NetFrontEnd(a.Socket(1));
        Assert.True(Eventually(() => a.Member(1).Endpoint.IsConnected));
        var sourcePath = a.Socket(1);

        var stages = new List<string>();
        var done = await MemberHandover.RunAsync(ownerA, 1, ownerB, 2, new Progress(p => stages.Add(p.Stage)));

        Assert.Equal(sourcePath, done.SocketPath);
        Assert.True(done.Bytes > 0);
        Assert.Contains(stages, s => s.Contains("running", StringComparison.Ordinal));
        var moved = b.Member(2).Device;
        Assert.Equal(source.Mac, moved.Mac);
        Assert.Equal("02:56:56:00:00:01", moved.Mac?.ToString());
        Assert.False(moved.LinkUp);
        Assert.True(moved.Trusted);
        Assert.Equal(filter, moved.Filter.ToString());
        Assert.False(moved.Filter.Promiscuous || moved.Filter.AllMulticast);
        Assert.Equal(3, b.Group.Msix.Assigned(1));
        Assert.False(b.Member(2).Endpoint.Backend.MemberStopped, "the target was not resumed");

        // The source let its front end go and has no socket; the path is the target's now.
        Assert.True(Eventually(() => !a.Member(1).Endpoint.IsConnected && !a.Member(1).Endpoint.Listening), "the source kept its front end or socket");
        // The path is taken when TAKE_OVER answers; the endpoint switches listeners on its control loop just after.
        Assert.True(Eventually(() => b.Member(2).Endpoint.SocketPath == sourcePath), $"the target still names {b.Member(2).Endpoint.SocketPath}");
        Assert.False(File.Exists(b.Socket(2)), "the target's old socket file is left behind");
        Assert.True(Eventually(() => b.Member(2).Endpoint.Listening));
        using var reconnected = new NetFrontEnd(sourcePath);
        Assert.True(Eventually(() => b.Member(2).Endpoint.IsConnected), "a front end reconnecting to the path did not reach the target");
        Assert.Equal("02:56:56:00:00:01", reconnected.Mac);
        Assert.False(a.Member(1).Endpoint.IsConnected);
    }

    [Fact]
    public async Task A_target_that_refuses_the_stream_leaves_both_members_running_with_their_sockets()
    {
        using var a = new GroupBackend(vfs: 2);
        using var b = new GroupBackend(vfs: 2, o => o with { QueuePairs = 2 }); // another queue count: the parts do not fit
        using var ownerA = Owner(a);
        using var ownerB = Owner(b);
        using var guest = new NetFrontEnd(a.Socket(1));
        var before = UnixSocket.Identity(a.Socket(1));

        var e = await Assert.ThrowsAsync<FrontEndException>(() => MemberHandover.RunAsync(ownerA, 1, ownerB, 2));

        Assert.Contains("DEV_PARTS_SET", e.Message, StringComparison.Ordinal);
        Assert.False(a.Member(1).Endpoint.Backend.MemberStopped, "the source stayed stopped");
        Assert.False(b.Member(2).Endpoint.Backend.MemberStopped, "the target stayed stopped");
        Assert.True(a.Member(1).Endpoint.IsConnected && a.Member(1).Endpoint.Listening);
        Assert.Equal(before, UnixSocket.Identity(a.Socket(1)));
        Assert.True(File.Exists(b.Socket(2)));
        Assert.Equal("02:56:56:00:00:02", b.Member(2).Device.Mac?.ToString());
    }

    [Fact]
    public async Task A_target_vf_with_a_front_end_is_refused_before_anything_stops()
    {
        using var a = new GroupBackend(vfs: 2);
        using var b = new GroupBackend(vfs: 2);
        using var ownerA = Owner(a);
        using var ownerB = Owner(b);
        using var busy = new NetFrontEnd(b.Socket(2));
        Assert.True(Eventually(() => b.Member(2).Endpoint.IsConnected));

        var e = await Assert.ThrowsAsync<FrontEndException>(() => MemberHandover.RunAsync(ownerA, 1, ownerB, 2));

        Assert.Contains("front end connected", e.Message, StringComparison.Ordinal);
        Assert.False(a.Member(1).Endpoint.Backend.MemberStopped);
        Assert.False(b.Member(2).Endpoint.Backend.MemberStopped);
        Assert.True(a.Member(1).Endpoint.Listening);
    }

    [Fact]
    public void Member_socket_refuses_a_running_member_a_bad_path_and_reserved_bytes_and_changes_nothing()
    {
        using var g = new GroupBackend(vfs: 2);
        using var owner = Owner(g);
        var state = MemberSocket.Query(owner, 1);
        Assert.Equal(new MemberSocketState(g.Socket(1), Listening: true, Connected: false, Stopped: false), state);

        AdminReply Socket(byte[] data) => owner.Admin.Execute((ushort)AdminOpcode.MemberSocket, SrIov, 1, data, 0);
        var target = Path.Combine(g.Directory, "taken.sock");
        // Running member: neither take-over nor release.
        Assert.Equal((ushort)AdminStatus.Ebusy, MemberSocket.TakeOver(owner, 1, target).Status);
        Assert.Equal((ushort)AdminStatus.Ebusy, MemberSocket.Release(owner, 1).Status);
        Assert.True(owner.Admin.Execute((ushort)AdminOpcode.DevModeSet, SrIov, 1, [1], 0).Ok);
        // Bad fields: reserved bytes, unknown operation, a path with QUERY, relative or NUL-bearing paths, a regular file.
        Assert.Equal((ushort)AdminStatus.Einval, Socket([0, 1, 0, 0, 0, 0, 0, 0]).Status);
        Assert.Equal((ushort)AdminStatus.Einval, Socket([3, 0, 0, 0, 0, 0, 0, 0]).Status);
        Assert.Equal((ushort)AdminStatus.Einval, Socket([0, 0, 0, 0, 0, 0, 0, 0, (byte)'/']).Status);
        Assert.Equal((ushort)AdminStatus.Einval, MemberSocket.TakeOver(owner, 1, "relative.sock").Status);
        Assert.Equal((ushort)AdminStatus.Einval, MemberSocket.TakeOver(owner, 1, target + "\0x").Status);
        var file = Path.Combine(g.Directory, "not-a-socket");
        File.WriteAllText(file, "keep me");
        Assert.Equal((ushort)AdminStatus.Einval, MemberSocket.TakeOver(owner, 1, file).Status);
        Assert.Equal("keep me", File.ReadAllText(file));
        Assert.Equal((ushort)AdminStatus.Einval, MemberSocket.TakeOver(owner, 1, Path.Combine(g.Directory, "missing", "x.sock")).Status);
        Assert.Equal(g.Socket(1), MemberSocket.Query(owner, 1).Path);
        Assert.True(g.Member(1).Endpoint.Listening);

        // Stopped, a good path: the member moves there and its old file goes.
        Assert.True(MemberSocket.TakeOver(owner, 1, target).Ok);
        Assert.True(Eventually(() => MemberSocket.Query(owner, 1).Path == target));
        Assert.False(File.Exists(g.Socket(1)));
        Assert.True(MemberSocket.Release(owner, 1).Ok);
        Assert.True(Eventually(() => !MemberSocket.Query(owner, 1).Listening));
        Assert.False(File.Exists(target));
        Assert.True(g.Member(2).Endpoint.Listening, "another member was touched");
    }

    [Fact]
    public void Taking_a_path_over_replaces_the_listener_there_atomically_and_the_old_owner_leaves_it_alone()
    {
        var dir = Directory.CreateTempSubdirectory("vuv-takeover-").FullName;
        try
        {
            var path = Path.Combine(dir, "vf.sock");
            using var old = UnixSocket.Listen(path);
            var oldIdentity = UnixSocket.Identity(path)!.Value;
            using var taken = UnixSocket.ListenReplacing(path);
            // Every connect reaches the new listener now; the old one sees nothing.
            using (UnixSocket.Connect(path))
            {
                Assert.NotNull(taken.Accept());
                Assert.Null(old.Accept());
            }
            Assert.False(UnixSocket.UnlinkIfSame(path, oldIdentity), "the old owner removed a path that is not its own any more");
            Assert.True(File.Exists(path));
            Assert.True(UnixSocket.UnlinkIfSame(path, UnixSocket.Identity(path)!.Value));
            Assert.Empty(Directory.GetFiles(dir));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>A source of many chunks, to watch the pipe hold it back while nobody reads.</summary>
    private sealed class CountingSource(int chunks) : MemberStateSource(null!, 1)
    {
        public int Produced;
        public override string Profile => "test";
        public override void Stop() { }
        public override void Resume() { }

        protected override IEnumerable<ReadOnlyMemory<byte>> Chunks()
        {
            for (int i = 0; i < chunks; i++)
            {
                Interlocked.Increment(ref Produced);
                var chunk = new byte[MemberStateChannel.ChunkSize];
                chunk.AsSpan().Fill((byte)i);
                yield return chunk;
            }
        }
    }

    [Fact]
    public async Task The_source_waits_while_the_target_falls_behind_and_every_byte_arrives_in_order()
    {
        const int chunks = 64;
        var source = new CountingSource(chunks);
        var pipe = new Pipe(MemberHandover.PipeOptions);
        var pumping = source.PumpAsync(pipe.Writer, _ => { }, CancellationToken.None);

        // Nobody reads: the pump stops at the pipe's pause threshold, far short of the 64 KiB it has.
        await Task.Delay(500);
        Assert.False(pumping.IsCompleted);
        Assert.InRange(Volatile.Read(ref source.Produced), 1, (int)(MemberHandover.PipeOptions.PauseWriterThreshold / MemberStateChannel.ChunkSize) + 1);

        var received = new ArrayBufferWriter<byte>();
        while (true)
        {
            var read = await pipe.Reader.ReadAsync();
            foreach (var segment in read.Buffer)
                received.Write(segment.Span);
            pipe.Reader.AdvanceTo(read.Buffer.End);
            if (read.IsCompleted)
                break;
        }
        await pumping.WaitAsync(Deadline);
        Assert.Equal(chunks * MemberStateChannel.ChunkSize, received.WrittenCount);
        for (int i = 0; i < chunks; i++)
            Assert.True(received.WrittenSpan.Slice(i * MemberStateChannel.ChunkSize, MemberStateChannel.ChunkSize).IndexOfAnyExcept((byte)i) < 0, $"chunk {i} out of order");
    }

    private sealed class Progress(Action<HandoverProgress> report) : IProgress<HandoverProgress>
    {
        public void Report(HandoverProgress value) => report(value);
    }
}
