using Microsoft.Extensions.Logging.Abstractions;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Backend.Sessions;
using VhostUserVirtio.Devices.Echo;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// The pieces a restarted daemon resumes its sessions from: the descriptor store the keeper runs,
/// and the session record in shared memory, which must read back exactly, survive a write cut short,
/// and refuse garbage with an error rather than a crash.
/// </summary>
[Trait("tier", "unit")]
public sealed class SessionKeepingTests
{
    private static SessionState SampleState(EventFd kick, EventFd call, FileDescriptor memory) => new()
    {
        Features = 0x1_3000_0020,
        FeaturesSet = true,
        Protocol = ProtocolFeatures.Mq | ProtocolFeatures.ReplyAck | ProtocolFeatures.Status,
        Owned = true,
        Status = 0xF,
        Regions = [new KeptRegion(0x0, 0x4000_0000, 0x7f00_0000_0000, 0, memory)],
        Queues =
        [
            new KeptQueue(0, 256, 0, true, true, (0x7f00_0001_0000, 0x7f00_0001_1000, 0x7f00_0001_2000), null, kick.Descriptor, call.Descriptor, null),
            new KeptQueue(1, 256, 17, false, false, null, 0x1234, null, null, null),
        ],
    };

    [Fact]
    public void A_session_record_reads_back_what_was_written_with_descriptors_found_by_id()
    {
        using var kick = new EventFd();
        using var call = new EventFd();
        using var memory = MemFd.Create("ram", 4096);
        var state = SampleState(kick, call, memory.Duplicate());
        var ids = new Dictionary<FileDescriptor, uint>(ReferenceEqualityComparer.Instance)
            { [state.Regions[0].Descriptor] = 7, [kick.Descriptor] = 8, [call.Descriptor] = 9 };
        using var record = SessionRecord.Create("test");
        Assert.Null(record.Read(_ => null));

        record.Write(state, fd => ids[fd]);
        var byId = ids.ToDictionary(e => e.Value, e => e.Key);
        var read = record.Read(id => byId.GetValueOrDefault(id));

        Assert.NotNull(read);
        Assert.Null(read.NotResumable);
        Assert.Equal((state.Features, state.FeaturesSet, state.Protocol, state.Owned, state.Status),
            (read.Features, read.FeaturesSet, read.Protocol, read.Owned, read.Status));
        Assert.Equal(state.Regions, read.Regions);
        Assert.Equal(state.Queues, read.Queues);
        state.Regions[0].Descriptor.Dispose();
    }

    [Fact]
    public void A_record_opened_from_the_kept_file_in_another_mapping_sees_the_last_complete_write()
    {
        using var kick = new EventFd();
        using var call = new EventFd();
        using var memory = MemFd.Create("ram", 4096);
        using var writer = SessionRecord.Create("test");
        writer.Write(SampleState(kick, call, memory) with { Status = 1 }, _ => 1);
        writer.Write(SampleState(kick, call, memory) with { Status = 2 }, _ => 1);
        using var reader = SessionRecord.Open(writer.Descriptor.Duplicate());

        Assert.Equal(2, reader.Read(_ => memory)!.Status);
        writer.Clear();
        Assert.Null(reader.Read(_ => memory));
    }

    [Fact]
    public void A_record_naming_a_descriptor_that_was_not_kept_is_refused()
    {
        using var kick = new EventFd();
        using var call = new EventFd();
        using var memory = MemFd.Create("ram", 4096);
        using var record = SessionRecord.Create("test");
        record.Write(SampleState(kick, call, memory), fd => fd == memory ? 1u : 2u);

        var e = Assert.Throws<InvalidDataException>(() => record.Read(id => id == 1 ? memory : null));
        Assert.Contains("was not kept", e.Message);
    }

    [Fact]
    public void Garbage_in_a_kept_record_file_is_refused_with_an_error_and_never_read_out_of_bounds()
    {
        var random = new Random(7);
        using var fd = MemFd.Create("garbage", SessionRecord.FileSize);
        using var map = MemoryMapping.Map(fd, (ulong)SessionRecord.FileSize);
        using var record = SessionRecord.Open(fd.Duplicate());
        using var memory = MemFd.Create("ram", 4096);
        var bytes = new byte[SessionRecord.FileSize];
        int refused = 0;
        for (int round = 0; round < 2000; round++)
        {
            random.NextBytes(bytes);
            // A valid magic and slot now and then, so the parser itself gets the garbage.
            if (round % 2 == 0)
            {
                BitConverter.TryWriteBytes(bytes.AsSpan(0), 0x3153534556554856UL);
                BitConverter.TryWriteBytes(bytes.AsSpan(8), (ulong)(1 + round % 3));
                BitConverter.TryWriteBytes(bytes.AsSpan(64), random.Next(-10, SessionRecord.SlotSize + 10));
            }
            unsafe { bytes.CopyTo(new Span<byte>((void*)map.Address, bytes.Length)); }
            try
            {
                record.Read(_ => memory);
            }
            catch (InvalidDataException)
            {
                refused++;
            }
        }
        Assert.True(refused > 500, $"only {refused} of 2000 garbage records were refused");
    }

    [Fact]
    public void The_descriptor_store_keeps_replaces_drops_and_hands_back_descriptors_by_name()
    {
        using var store = new DescriptorStore(NullLogger.Instance);
        using var first = new EventFd();
        using var second = new EventFd();
        using (var keeper = DescriptorKeeper.Connect(store.Path))
        {
            keeper.Store("a#1", first.Descriptor);
            keeper.Store("a#2", second.Descriptor);
            keeper.Store("a#1", second.Descriptor);  // replaces
            keeper.Store("b#1", first.Descriptor);
            keeper.Drop("b#1");
        }
        // The daemon is gone; a new one fetches what is left, in the same files.
        using var again = DescriptorKeeper.Connect(store.Path);
        var kept = again.Fetch();
        try
        {
            Assert.Equal(["a#1", "a#2"], kept.Keys.Order());
            Assert.True(second.Signal());
            Assert.True(kept["a#1"].WaitReadable(10_000), "a#1 is not the second eventfd");
        }
        finally
        {
            foreach (var fd in kept.Values)
                fd.Dispose();
        }
    }

    /// <summary>Session records open in this process (the daemon's side and the store's copy, both here).</summary>
    private static int OpenSessionRecords() => ProcessFds.Targets().Count(t => t.Contains("memfd:vhost-virtio-session"));

    [Fact]
    public void A_removed_device_leaves_no_session_record_open_in_the_daemon_or_the_keeper()
    {
        string dir = Directory.CreateTempSubdirectory("vuv-kept.").FullName;
        try
        {
            using var store = new DescriptorStore(NullLogger.Instance);
            using var sessions = SessionKeeper.Connect(store.Path, NullLogger.Instance);
            using var server = new VhostUserServer(NullLoggerFactory.Instance) { Sessions = sessions };
            string socket = Path.Combine(dir, "vf1.sock");
            var endpoint = server.Serve(new EchoDevice("vf1"), socket);
            int before = OpenSessionRecords();
            using (UnixSocket.Connect(socket))
            {
                // Listener, connection and the session's record are kept.
                Assert.True(EchoBackend.WaitUntil(() => store.Count == 3), $"{store.Count} descriptor(s) kept, not 3");
                Assert.Equal(before + 2, OpenSessionRecords());
                // The device goes (a VF disabled) with its front end attached.
                server.Remove(endpoint);
            }
            Assert.True(EchoBackend.WaitUntil(() => store.Count == 0), $"the keeper still holds {store.Count} descriptor(s) of the removed device");
            Assert.Equal(before, OpenSessionRecords());
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void The_keeper_waits_on_an_idle_daemon_without_throwing_an_exception_every_half_second()
    {
        int thrown = 0;
        void Count(object? sender, System.Runtime.ExceptionServices.FirstChanceExceptionEventArgs e)
        {
            if (Thread.CurrentThread.Name == "keeper")
                Interlocked.Increment(ref thrown);
        }
        using var store = new DescriptorStore(NullLogger.Instance);
        using var keeper = DescriptorKeeper.Connect(store.Path);
        using var fd = new EventFd();
        keeper.Store("a#1", fd.Descriptor);
        Assert.True(EchoBackend.WaitUntil(() => store.Count == 1), "the store did not take the descriptor");
        AppDomain.CurrentDomain.FirstChanceException += Count;
        try
        {
            Thread.Sleep(2_000); // the daemon idle over several of the store's waits
        }
        finally
        {
            AppDomain.CurrentDomain.FirstChanceException -= Count;
        }
        Assert.Equal(0, Volatile.Read(ref thrown));
    }

    [Fact]
    public void The_descriptor_store_refuses_a_process_other_than_the_daemon_it_runs()
    {
        using var store = new DescriptorStore(NullLogger.Instance) { Authorized = Environment.ProcessId + 1_000_000 };
        using var keeper = DescriptorKeeper.Connect(store.Path);
        Assert.ThrowsAny<Exception>(() => keeper.Fetch());
    }
}
