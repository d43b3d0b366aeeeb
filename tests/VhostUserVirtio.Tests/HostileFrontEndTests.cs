using CsCheck;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// A hostile front end on VF3 of the real daemon (a child process, so a crash shows as the child
/// dying) while VF1 and VF2 forward frames to each other the whole time. Whatever VF3's front end
/// does, the daemon must not die, stall or log an error, VF1/VF2 frames must keep arriving intact
/// and none may go missing, VF3 must serve a well-behaved front end afterwards, and once the hostile
/// front end is gone the daemon must hold no more descriptors, threads or mappings than before (see
/// <see cref="GroupUnderAttack.Noise"/>). Each test first runs a short warm-up round of its own
/// hostility, so first-use costs in the daemon land before the baseline. Random tests print their
/// seed; CsCheck_Seed=SEED replays one.
/// </summary>
[Trait("tier", "daemon")]
public sealed class HostileFrontEndTests(ITestOutputHelper output)
{
    private const int Hostile = GroupUnderAttack.HostileVf;
    private const int Partner = GroupUnderAttack.PartnerVf;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(20);

    /// <summary>The seed from CsCheck_Seed, or a new one; printed so a failing run can be replayed.</summary>
    private PCG Seed(string test, out string context)
    {
        var given = Environment.GetEnvironmentVariable("CsCheck_Seed");
        var pcg = string.IsNullOrEmpty(given) ? new PCG((uint)Random.Shared.Next(), (ulong)Random.Shared.NextInt64()) : PCG.Parse(given);
        string seed = pcg.ToString(pcg.State);
        context = $"seed {seed} (replay: CsCheck_Seed={seed} dotnet test --filter FullyQualifiedName~{nameof(HostileFrontEndTests)}.{test})";
        output.WriteLine(context);
        return pcg;
    }

    /// <summary>A front end brought up properly on <paramref name="vf"/>; failing that, the test fails saying so.</summary>
    private static FrontEndSession Session(GroupUnderAttack rig, int vf)
    {
        try
        {
            return FrontEndSession.Start(rig.Socket(vf));
        }
        catch (Exception e) when (e is TimeoutException or FrontEndException or NativeException)
        {
            rig.Fail($"a front end could not bring VF{vf} up: {e.GetType().Name}: {e.Message}");
            throw;
        }
    }

    /// <summary>Frames between VF3 and VF4, for a hostile front end that needs its rings busy; nothing is asserted on them.</summary>
    private static ForwardingPair HostileTraffic(GroupUnderAttack rig, FrontEndSession hostile, FrontEndSession partner)
    {
        var traffic = new ForwardingPair(hostile, GroupUnderAttack.MacOf(Hostile), partner, GroupUnderAttack.MacOf(Partner), strict: false, name: "vf3-vf4");
        if (traffic.WaitForMoreThan(0, Deadline))
            return traffic;
        traffic.Dispose();
        rig.Fail("VF3 and VF4 exchanged no frame before any hostility (the test could not start its traffic)");
        throw new InvalidOperationException(); // not reached: Fail throws
    }

    [Fact]
    public void Random_message_sequences_on_one_vf_never_kill_stall_or_leak_in_the_daemon_while_two_others_forward()
    {
        const int WarmUp = 10, Sequences = 1000;
        var pcg = Seed(nameof(Random_message_sequences_on_one_vf_never_kill_stall_or_leak_in_the_daemon_while_two_others_forward), out var context);
        using var rig = new GroupUnderAttack(context);
        using var ram = new HostileRam();
        var executor = new HostileExecutor(rig.Socket(Hostile), ram);
        string previous = "(none)";

        void Play(int from, int count)
        {
            for (int i = from; i < from + count; i++)
            {
                string sequenceSeed = pcg.ToString(pcg.State);
                var sequence = HostileMessages.Sequence.Generate(pcg, null!, out _);
                string? stalled;
                try
                {
                    stalled = executor.Run(sequence);
                }
                catch (Exception e) when (e is NativeException or TimeoutException)
                {
                    stalled = $"{e.GetType().Name}: {e.Message}";
                }
                string where = $"sequence {i} (alone: CsCheck_Seed={sequenceSeed}), step {executor.LastStep} of\n{sequence}";
                // The daemon logs asynchronously: what it says may belong to the sequence before.
                rig.Context = $"{context}\nthe sequence before it: {previous}";
                if (stalled != null)
                    rig.Fail($"{stalled}\nat {where}");
                rig.Checkpoint(where);
                previous = where;
            }
        }

        Play(0, WarmUp);
        rig.AssertDeviceUsable(Hostile, "the warm-up sequences");
        var baseline = rig.Counters();
        output.WriteLine($"baseline: {baseline}");

        Play(WarmUp, Sequences);
        output.WriteLine($"{executor.Connections} connections, {executor.MessagesSent} messages, {executor.ClosedByBackEnd} closed by the daemon; VF1/VF2: {rig.Pair}");
        rig.Context = context;
        if (executor.BadReplies.Count > 0)
            rig.Fail($"replies whose header breaks the protocol (request:flags): {string.Join(", ", executor.BadReplies.Distinct())}");
        rig.AssertDeviceUsable(Hostile, $"{Sequences} hostile sequences");
        rig.AssertBackToBaseline(baseline, $"{Sequences} hostile sequences");
        output.WriteLine($"after: {rig.Counters()}");
    }

    [Fact]
    public void Memory_tables_replaced_added_and_removed_while_that_vf_runs_traffic_never_harm_the_daemon_or_the_others()
    {
        const int OpsPerSession = 12, WarmUp = 2, Sessions = 16;
        var pcg = Seed(nameof(Memory_tables_replaced_added_and_removed_while_that_vf_runs_traffic_never_harm_the_daemon_or_the_others), out var context);
        using var rig = new GroupUnderAttack(context);
        long hostileFrames = 0, refused = 0;

        // A session per handful of changes: one that takes the rings' memory away breaks them for good.
        void Churn(int from, int count)
        {
            for (int s = from; s < from + count; s++)
            {
                var ops = MemoryChurn.Ops.Array[OpsPerSession].Generate(pcg, null!, out _);
                using var hostile = Session(rig, Hostile);
                using var partner = Session(rig, Partner);
                using var churn = new MemoryChurn(hostile);
                using var traffic = HostileTraffic(rig, hostile, partner);
                for (int i = 0; i < ops.Length; i++)
                {
                    string step = $"session {s}, change {i}: {ops[i]} (this session: {string.Join(", ", ops)})";
                    try
                    {
                        if (churn.Apply(ops[i]) != 0)
                            refused++;
                    }
                    catch (Exception e) when (e is TimeoutException or FrontEndException)
                    {
                        rig.Fail($"no answer to {step}: {e.Message}");
                    }
                    rig.Checkpoint(step);
                }
                hostileFrames += traffic.Delivered;
            }
        }

        Churn(0, WarmUp);
        rig.AssertDeviceUsable(Hostile, "the warm-up memory changes");
        var baseline = rig.Counters();
        Churn(WarmUp, Sessions);
        output.WriteLine($"{Sessions * OpsPerSession} changes, {refused} refused; VF3/VF4 exchanged {hostileFrames} frames meanwhile; VF1/VF2: {rig.Pair}");
        rig.AssertDeviceUsable(Hostile, "the memory changes");
        rig.AssertBackToBaseline(baseline, "the memory changes");
    }

    [Fact]
    public void Descriptors_the_front_end_closes_after_handing_them_over_leave_the_daemon_and_that_vfs_rings_working()
    {
        using var rig = new GroupUnderAttack("(no randomness)");

        void Round(int round)
        {
            using var hostile = Session(rig, Hostile);
            using var partner = Session(rig, Partner);
            using var traffic = HostileTraffic(rig, hostile, partner);
            void Accepted(string what, FrontendRequest request, byte[] payload, FileDescriptor fd)
            {
                using (fd) // closed as soon as it was sent: the daemon holds the only copy
                {
                    ulong ack;
                    try
                    {
                        ack = MemoryChurn.Ack(hostile, request, payload, [fd.Number]);
                    }
                    catch (Exception e) when (e is TimeoutException or FrontEndException)
                    {
                        rig.Fail($"round {round}: no answer to {what}: {e.Message}");
                        return;
                    }
                    if (ack != 0)
                        rig.Fail($"round {round}: {what} was refused (ack {ack}), though it is what QEMU sends");
                }
                rig.Checkpoint($"round {round}: {what}, then closing our copy");
            }

            for (uint q = 0; q < 2; q++)
                foreach (var request in new[] { FrontendRequest.SetVringErr, FrontendRequest.SetVringCall, FrontendRequest.SetVringKick })
                    Accepted($"{request} of queue {q} with a new eventfd", request, BitConverter.GetBytes((ulong)q), new EventFd().Descriptor);
            var ram = hostile.Ram.Regions[0];
            Accepted("SET_MEM_TABLE with a copy of its RAM", FrontendRequest.SetMemTable,
                MemoryTablePayload.Write([new MemoryRegionDescription(ram.Gpa, ram.Size, ram.UserAddress, ram.MmapOffset)]), ram.Fd.Duplicate());
            ram.Fd.Dispose(); // its own mapping stays; the daemon's copy of the file is now the only one
            Accepted("ADD_MEM_REG of a new memfd", FrontendRequest.AddMemReg,
                SingleRegionPayload.Write(new MemoryRegionDescription(0x4000_0000, 1 << 20, 0x7d00_0000_0000, 0)), MemFd.Create("hostile-extra", 1 << 20));

            // The daemon's copies keep the rings alive: frames still flow between VF3 and VF4.
            if (!traffic.WaitForMoreThan(traffic.Delivered, Deadline))
                rig.Fail($"round {round}: VF3 and VF4 stopped exchanging frames once VF3's front end closed its copies of what it handed over: {traffic}");
        }

        Round(0);
        rig.AssertDeviceUsable(Hostile, "the warm-up round");
        var baseline = rig.Counters();
        for (int round = 1; round <= 4; round++)
            Round(round);
        rig.AssertDeviceUsable(Hostile, "closing handed-over descriptors");
        rig.AssertBackToBaseline(baseline, "closing handed-over descriptors");
    }

    [Fact]
    public void Pipes_sockets_memfds_and_saturated_eventfds_as_kick_call_or_err_never_stall_or_kill_the_daemon()
    {
        using var rig = new GroupUnderAttack("(no randomness)");
        FdKind[] kinds = [FdKind.PipeReadEnd, FdKind.PipeReadEndAtEof, FdKind.PipeWriteEnd, FdKind.FullPipe, FdKind.Socket, FdKind.SmallMemFd, FdKind.SaturatedEventFd];
        // Call on the receive queue (frames from VF4 make the daemon signal it), kick on the transmit
        // queue (the one the daemon listens to), err on the transmit queue (then broken on purpose).
        (FrontendRequest Request, uint Queue)[] roles = [(FrontendRequest.SetVringCall, 0), (FrontendRequest.SetVringKick, 1), (FrontendRequest.SetVringErr, 1)];

        void Give(FdKind kind, FrontendRequest request, uint queue)
        {
            string what = $"a {kind} as {request} of VF3 queue {queue}";
            using var hostile = Session(rig, Hostile);
            using var partner = Session(rig, Partner);
            using var fds = new HostileFds();
            using var ram = new HostileRam();
            var sent = fds.Make([new FdSpec(kind)], ram).Single();
            using (sent)
            {
                try
                {
                    MemoryChurn.Ack(hostile, request, BitConverter.GetBytes((ulong)queue), [sent.Number]); // refused or accepted: both fine
                }
                catch (Exception e) when (e is TimeoutException or FrontEndException)
                {
                    rig.Fail($"no answer after giving {what}: {e.Message}");
                }
            }
            switch (request)
            {
                case FrontendRequest.SetVringErr:
                    // Break the ring so the daemon reports it on the error descriptor.
                    hostile.Queues[1].SetAvailIndex(0x8000);
                    hostile.Queues[1].Notify();
                    rig.Checkpoint($"breaking the ring after giving {what}");
                    break;
                case FrontendRequest.SetVringCall:
                    // Frames from VF4 make the daemon notify VF3's receive queue; whether VF3 gets them is not the point.
                    using (var traffic = new ForwardingPair(hostile, GroupUnderAttack.MacOf(Hostile), partner, GroupUnderAttack.MacOf(Partner), strict: false, name: "vf3-vf4"))
                        traffic.WaitForMoreThan(32, TimeSpan.FromSeconds(1));
                    rig.Checkpoint($"traffic to VF3 after giving {what}");
                    break;
                default:
                    rig.Checkpoint($"giving {what}"); // the daemon waits on it from now on
                    break;
            }
        }

        Give(FdKind.EventFd, FrontendRequest.SetVringCall, 0);
        rig.AssertDeviceUsable(Hostile, "the warm-up");
        var baseline = rig.Counters();
        foreach (var kind in kinds)
            foreach (var (request, queue) in roles)
                Give(kind, request, queue);
        rig.AssertDeviceUsable(Hostile, "descriptors of the wrong kind");
        rig.AssertBackToBaseline(baseline, "descriptors of the wrong kind");
    }

    [Fact]
    public void A_disconnect_in_the_middle_of_any_message_type_leaves_the_vf_reusable_and_nothing_behind()
    {
        using var rig = new GroupUnderAttack("(no randomness)");
        using var ram = new HostileRam();
        var executor = new HostileExecutor(rig.Socket(Hostile), ram);
        Ending[] cuts = [Ending.CutInHeader, Ending.CutAfterHeader, Ending.CutInPayload, Ending.CutAfterMessage, Ending.SizeLies];
        FrontendRequest[] requests = [.. Enum.GetValues<FrontendRequest>(), (FrontendRequest)99];

        void Sweep(string round)
        {
            foreach (var request in requests)
            {
                foreach (bool running in new[] { false, true })
                {
                    foreach (var cut in cuts)
                    {
                        var (payload, fds) = HostileMessages.WellFormed(request);
                        var message = new HostileMessage((uint)request, MessageHeader.Version | MessageHeader.NeedReplyFlag, payload, fds, cut);
                        string where = $"{round}: {message} on {(running ? "a device with running rings" : "a fresh connection")}";
                        string? stalled;
                        try
                        {
                            stalled = executor.Run(new HostileSequence(running, [message]));
                        }
                        catch (Exception e) when (e is NativeException or TimeoutException)
                        {
                            stalled = $"{e.GetType().Name}: {e.Message}";
                        }
                        if (stalled != null)
                            rig.Fail($"{stalled}\nat {where}");
                    }
                }
                rig.Checkpoint($"{round}: disconnects in the middle of {request}");
            }
        }

        Sweep("warm-up");
        rig.AssertDeviceUsable(Hostile, "the warm-up disconnects");
        var baseline = rig.Counters();
        Sweep("sweep");
        output.WriteLine($"{executor.Connections} connections cut; VF1/VF2: {rig.Pair}");
        rig.AssertDeviceUsable(Hostile, "disconnects in the middle of every message type");
        rig.AssertBackToBaseline(baseline, "disconnects in the middle of every message type");
    }

    [Fact]
    public void Twenty_thousand_refused_messages_on_one_connection_log_only_a_few_hundred_warnings()
    {
        const int Distinct = 1000, Repeats = 20, MaxWarnings = 300;
        var pcg = Seed(nameof(Twenty_thousand_refused_messages_on_one_connection_log_only_a_few_hundred_warnings), out var context);
        using var rig = new GroupUnderAttack(context);
        var messages = HostileMessages.Refused.Array[Distinct].Generate(pcg, null!, out _);
        var stream = Enumerable.Repeat(messages, Repeats).SelectMany(m => m).SelectMany(m => m).ToArray();

        int warningsBefore = rig.WarningLines();
        int logBefore = rig.Daemon.OutputLength;
        using (var fe = RawFrontEnd.Connect(rig.Socket(Hostile)))
        {
            if (!fe.TrySend(stream, timeoutMs: 60_000))
                rig.Fail($"the daemon stopped reading or closed the connection during {Distinct * Repeats} refused messages");
            var answer = fe.Sync(60_000, out _);
            if (answer != RawFrontEnd.SyncResult.Answered)
                rig.Fail($"after {Distinct * Repeats} refused messages the connection was {answer} instead of answering GET_FEATURES");
        }
        rig.Checkpoint($"{Distinct * Repeats} refused messages");

        // The daemon's console logger writes on its own thread: wait until its output stops growing.
        int length = -1;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (rig.Daemon.OutputLength != length && DateTime.UtcNow < deadline)
        {
            length = rig.Daemon.OutputLength;
            Thread.Sleep(500);
        }
        int warnings = rig.WarningLines() - warningsBefore;
        output.WriteLine($"{Distinct * Repeats} refused messages ({stream.Length} bytes): {warnings} warning lines, {length - logBefore} characters of log");
        if (warnings >= MaxWarnings)
            rig.Fail($"{warnings} warning lines ({length - logBefore} characters of log) for {Distinct * Repeats} refused messages: " +
                     $"warnings a front end can trigger are not rate-limited (at most {MaxWarnings} expected)");
    }

    [Fact]
    public void A_guest_memory_file_shrunk_after_it_was_handed_over_does_not_kill_the_daemon()
    {
        using var rig = new GroupUnderAttack("(no randomness)");
        using var ram = new HostileRam(sealable: false);
        var executor = new HostileExecutor(rig.Socket(Hostile), ram);
        using (var fds = new HostileFds())
        {
            // One broadcast frame queued on the transmit ring, in region A, before A shrinks.
            ulong buffer = HostileRam.BufferArea;
            var frame = ram.Span(buffer, 12 + 60);
            frame.Clear();
            Devices.Switch.Mac.Broadcast.Write(frame[12..]);
            GroupUnderAttack.MacOf(Hostile).Write(frame[18..]);
            RawFrontEnd? fe;
            try
            {
                fe = executor.Open(fds);
            }
            catch (TimeoutException e)
            {
                rig.Fail($"no answer to a proper bring-up with unsealable memory: {e.Message}");
                return;
            }
            using (fe)
            {
                ram.WriteDescriptor(1, 0, buffer, 12 + 60, 0, 0);
                ram.Publish(1, 0, 0, 1);
                int errno = HostileFds.Truncate(ram.RegionFd(0), 0);
                output.WriteLine(errno == 0 ? "region A shrank to 0 bytes under the daemon" : $"region A could not shrink (errno {errno})");
                // From here on this process must not touch A either: only kicks.
                foreach (var doorbell in fds.Doorbells)
                    doorbell.Signal();
                rig.Checkpoint("kicking VF3's rings after its memory file shrank to nothing");
                rig.Checkpoint("a while after VF3's memory file shrank");
                if (fe != null && fe.Sync(10_000, out _) == RawFrontEnd.SyncResult.TimedOut)
                    rig.Fail("the daemon did not answer VF3's front end after its memory file shrank");
            }
        }
        rig.AssertDeviceUsable(Hostile, "a memory file that shrank");
    }
}
