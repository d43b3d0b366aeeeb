using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Live migration of a real Linux guest between two QEMUs whose NICs are different VFs of one group,
/// while it pings a second guest on a third VF. Deadlines are minutes: QEMU emulates the CPU and the
/// machine is shared.
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestMigrationTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan BootDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan MigrationDeadline = TimeSpan.FromMinutes(2);
    private static readonly TimeSpan ScriptDeadline = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan QmpDeadline = TimeSpan.FromSeconds(30);
    // The migrating guest's MAC is VF1's own; the partner is on VF2 with VF2's.
    private const string GuestMac = "02:56:56:00:00:01", PartnerMac = "02:56:56:00:00:02";
    private const string GuestIp = "10.0.0.1", PartnerIp = "10.0.0.2";
    private const int Pings = 150;
    private const double PingInterval = 0.1;

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-mig-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>
    /// The guest keeps its MAC when it moves to VF3, and the switch must deliver its traffic there
    /// after the move: QEMU's announcement (the guest's own gratuitous ARP when it negotiated
    /// GUEST_ANNOUNCE, otherwise SEND_RARP to the back end) teaches the switch the new port. The
    /// guest's pings span the migration; the longest run of unanswered ones must stay within a second.
    /// </summary>
    [Fact]
    public void A_guest_pinging_every_100_ms_live_migrates_to_a_qemu_on_another_vf_losing_at_most_a_second_of_pings()
    {
        using var backend = new GroupBackend(vfs: 3);
        // As a management stack does before it migrates a guest onto a VF: the owner gives the
        // destination VF the guest's MAC. Trusting VF3 instead would let it send from that MAC, but
        // its receive filter would still take only 02:56:56:00:00:03, and spoof checking would be off.
        SetVfMac(backend, 3, GuestMac);
        Assert.Equal(GuestMac, backend.Member(3).Device.Mac?.ToString());

        var source = new GuestOptions
        {
            Name = "source",
            Memory = "256M",
            Nics = [new GuestNic(backend.Socket(1), GuestMac)],
            TestScript = GuestScripts.PingThroughMigration(GuestMac, GuestIp, PartnerIp, Pings, PingInterval),
            QmpSocket = Path.Combine(_dir, "source.qmp"),
            ConsoleLogPath = Path.Combine(_dir, "source.log"),
            Log = output.WriteLine,
        };
        var incoming = "unix:" + Path.Combine(_dir, "migration.sock");
        var destination = source.MigrationTarget("destination", [new GuestNic(backend.Socket(3), GuestMac)], incoming,
            Path.Combine(_dir, "destination.qmp"), Path.Combine(_dir, "destination.log"));

        var partner = new GuestOptions
        {
            Name = "partner",
            Memory = "256M",
            Nics = [new GuestNic(backend.Socket(2), PartnerMac)],
            TestScript = GuestScripts.PingPartner(PartnerMac, PartnerIp),
            ConsoleLogPath = Path.Combine(_dir, "partner.log"),
            Log = output.WriteLine,
        };

        var run = PingThroughMigration(source, destination, partner);

        var macTable = backend.Group.Status().MacTable;
        var announced = backend.Logs.Lines.Count(l => l.Text.Contains("announcing", StringComparison.Ordinal));
        output.WriteLine($"SEND_RARP announcements by the back end: {announced}; MAC table: {string.Join(", ", macTable)}");
        AssertAtMostASecondLost(run);
        Assert.Contains(macTable, e => e.Mac == GuestMac && e.Port == "vf3");
        Assert.True(backend.Member(3).Device.Counters.TxPackets > 0, "the destination VF carried none of the guest's traffic");
    }

    /// <summary>
    /// The same move with QEMU's own networking (a multicast socket on loopback joins the three
    /// QEMUs like a hub), so no vhost-user back end is involved: shows the harness (QMP, -incoming,
    /// the console continuing on the destination, the ping record) works by itself.
    /// </summary>
    [Fact]
    public void A_guest_on_qemus_own_network_live_migrates_and_its_pings_continue_on_the_destination_console()
    {
        var hub = $"socket,mcast=230.0.0.1:{Random.Shared.Next(20000, 60000)},localaddr=127.0.0.1";
        var source = new GuestOptions
        {
            Name = "source",
            Memory = "256M",
            QemuNics = [new QemuNic(hub, GuestMac)],
            TestScript = GuestScripts.PingThroughMigration(GuestMac, GuestIp, PartnerIp, Pings, PingInterval),
            QmpSocket = Path.Combine(_dir, "source.qmp"),
            ConsoleLogPath = Path.Combine(_dir, "source.log"),
            Log = output.WriteLine,
        };
        var incoming = "unix:" + Path.Combine(_dir, "migration.sock");
        var destination = source.MigrationTarget("destination", [], incoming, Path.Combine(_dir, "destination.qmp"), Path.Combine(_dir, "destination.log"));
        var partner = new GuestOptions
        {
            Name = "partner",
            Memory = "256M",
            QemuNics = [new QemuNic(hub, PartnerMac)],
            TestScript = GuestScripts.PingPartner(PartnerMac, PartnerIp),
            ConsoleLogPath = Path.Combine(_dir, "partner.log"),
            Log = output.WriteLine,
        };

        var run = PingThroughMigration(source, destination, partner);

        Assert.DoesNotContain(run.SourceConsole, l => l.Contains("PING-RESULT", StringComparison.Ordinal));
        Assert.Contains(run.DestinationConsole, l => l.Contains("PING-RESULT", StringComparison.Ordinal));
        AssertAtMostASecondLost(run);
    }

    [Fact]
    public void A_migration_target_keeps_the_machine_and_adds_incoming_and_qmp_to_the_command_line()
    {
        var source = new GuestOptions
        {
            Memory = "256M",
            Nics = [new GuestNic("/s/vf1.sock", GuestMac)],
            TestScript = "true",
            QmpSocket = "/s/source.qmp",
        };
        var target = source.MigrationTarget("destination", [new GuestNic("/s/vf3.sock", GuestMac)], "unix:/s/mig.sock", "/s/dest.qmp");
        var a = QemuGuest.BuildArguments(source, "k", "i");
        var b = QemuGuest.BuildArguments(target, "k", "i");

        Assert.Equal(target.TestScript, source.TestScript);
        Assert.Equal(["-incoming", "unix:/s/mig.sock"], b.SkipWhile(x => x != "-incoming").Take(2));
        Assert.Equal(["-qmp", "unix:/s/dest.qmp,server=on,wait=off"], b.SkipWhile(x => x != "-qmp").Take(2));
        Assert.DoesNotContain("-incoming", a);
        // Everything but the NIC's socket, the QMP socket and -incoming is the same machine.
        string[] Machine(IReadOnlyList<string> args) => [.. args.Where(x => !x.Contains("/s/", StringComparison.Ordinal) && x != "-incoming")];
        Assert.Equal(Machine(a), Machine(b));
        Assert.Throws<ArgumentException>(() => source.MigrationTarget("d", [new GuestNic("/s/vf3.sock", PartnerMac)], "unix:/s/m", null));
        Assert.Throws<ArgumentException>(() => source.MigrationTarget("d", [], "unix:/s/m", null));
    }

    [Fact]
    public void Ping_loss_counts_unanswered_sequence_numbers_and_the_longest_run_of_them()
    {
        string[] console =
        [
            "PING-START to=10.0.0.2 count=12 interval=0.1",
            "[   12.5] virtio_net virtio0: some kernel noise",
            "PING-RESULT from=10.0.0.1 to=10.0.0.2 transmitted=12 received=8 min=0.5 avg=1.0 max=9.1",
            "PING-SEQS 0 1 2 3 4 8 9 11 ",
        ];
        var loss = GuestScripts.ParsePingLoss(console)!;
        Assert.Equal((12, 8, 4), (loss.Transmitted, loss.Received, loss.Lost));
        Assert.Equal([5, 6, 7, 10], loss.Missing);
        Assert.Equal((3, 5), (loss.LongestGap, loss.FirstOfLongestGap));
        Assert.Null(GuestScripts.ParsePingLoss(console[..3]));
    }

    [Fact]
    public void A_query_migrate_answer_gives_status_times_and_error()
    {
        using var done = System.Text.Json.JsonDocument.Parse("""
            {"status": "completed", "setup-time": 2, "downtime": 153, "total-time": 926,
             "ram": {"transferred": 95420416, "total": 285220864, "dirty-sync-count": 3}}
            """);
        var info = MigrationInfo.Parse(done.RootElement);
        Assert.True(info.Completed && info.Ended);
        Assert.Equal((153L, 926L, 2L, 3L), (info.DowntimeMs!.Value, info.TotalTimeMs!.Value, info.SetupTimeMs!.Value, info.DirtySyncCount!.Value));
        using var failed = System.Text.Json.JsonDocument.Parse("""{"status": "failed", "error-desc": "Unable to write to socket"}""");
        info = MigrationInfo.Parse(failed.RootElement);
        Assert.True(info.Ended && !info.Completed);
        Assert.Equal("Unable to write to socket", info.Error);
        Assert.Equal("none", MigrationInfo.Parse(default).Status);
    }

    private sealed record MigrationRun(MigrationInfo Migration, GuestScripts.PingLoss Loss, IReadOnlyList<string> SourceConsole,
        IReadOnlyList<string> DestinationConsole);

    /// <summary>
    /// Starts the partner, the source and the waiting destination; once the source pings the partner,
    /// migrates it and waits for its script to end on the destination. Every QEMU is gone when this
    /// returns or throws.
    /// </summary>
    private MigrationRun PingThroughMigration(GuestOptions source, GuestOptions destination, GuestOptions partner)
    {
        using var partnerQemu = QemuGuest.Start(partner);
        using var src = QemuGuest.Start(source);
        using var dst = QemuGuest.Start(destination);
        using var srcQmp = QmpClient.Connect(source.QmpSocket!, QmpDeadline);
        using var dstQmp = QmpClient.Connect(destination.QmpSocket!, QmpDeadline);
        output.WriteLine($"QEMU {srcQmp.Version}; destination run state {dstQmp.RunState()}");

        partnerQemu.WaitForLine(GuestScripts.PartnerReadyMarker, BootDeadline);
        src.WaitForLine(GuestScripts.PingStartMarker, BootDeadline);
        // A few seconds of pings before the move, so loss at the switch-over is told from loss at the start.
        Thread.Sleep(TimeSpan.FromSeconds(3));

        srcQmp.SetMigrationParameters(new Dictionary<string, object> { ["max-bandwidth"] = 1L << 30 });
        try
        {
            srcQmp.Migrate(destination.Incoming!);
        }
        catch (QmpException e)
        {
            Assert.Fail($"QEMU refused to migrate: {e.Description} (query-migrate: {srcQmp.QueryMigrate()})");
        }
        var migration = srcQmp.WaitForMigration(MigrationDeadline, output.WriteLine);
        output.WriteLine($"migration: {migration}");
        Assert.True(migration.Completed, $"migration did not complete: {migration}\n{migration.Raw}\n{QemuGuest.DescribeAcross(src, dst)}");
        output.WriteLine($"source run state {srcQmp.RunState()}, destination {dstQmp.RunState()}");

        int status = dst.WaitForTestExit(ScriptDeadline);
        var loss = GuestScripts.ParsePingLoss(QemuGuest.ConsoleAcross(src, dst));
        Assert.True(status == 0 && loss != null, $"script exit {status}, ping summary {loss}. {QemuGuest.DescribeAcross(src, dst)}");
        output.WriteLine($"downtime {migration.DowntimeMs} ms, total-time {migration.TotalTimeMs} ms, setup-time {migration.SetupTimeMs} ms");
        output.WriteLine($"pings: {loss.Received}/{loss.Transmitted} answered, {loss.Lost} lost, longest gap {loss.LongestGap} " +
            $"(from seq {loss.FirstOfLongestGap}), missing [{string.Join(' ', loss.Missing)}]");

        srcQmp.Execute("quit");
        Assert.True(src.WaitForExit(TimeSpan.FromSeconds(30)), "the source QEMU did not quit");
        return new MigrationRun(migration, loss, src.Lines, dst.Lines);
    }

    private static void AssertAtMostASecondLost(MigrationRun run)
    {
        var loss = run.Loss;
        Assert.Equal(Pings, loss.Transmitted);
        Assert.True(loss.LongestGap * PingInterval <= 1.0,
            $"{loss.LongestGap} pings in a row unanswered (from seq {loss.FirstOfLongestGap}); missing [{string.Join(' ', loss.Missing)}]");
        Assert.True(loss.Lost * PingInterval <= 1.0, $"{loss.Lost} pings lost: [{string.Join(' ', loss.Missing)}]");
    }

    /// <summary>NET_MEMBER_CTRL, MAC class, ADDR_SET on <paramref name="vf"/> through the owner's admin queue.</summary>
    private static void SetVfMac(GroupBackend backend, int vf, string mac)
    {
        using var owner = OwnerDriver.Connect(backend.Socket(0));
        owner.UseAllCommands();
        var payload = new byte[8 + 6];
        payload[0] = VirtioNet.CtrlMac;
        payload[1] = VirtioNet.CtrlMacAddrSet;
        Mac.Parse(mac).Write(payload.AsSpan(8));
        var reply = owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, (ushort)AdminGroupType.SrIov, (ulong)vf, payload, 0);
        Assert.True(reply.Ok, $"NET_MEMBER_CTRL set-mac on VF{vf}: {reply.Describe()}");
    }
}
