using System.CommandLine;
using System.Diagnostics;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// `vhost-virtio migrate-member`: hands a member over from one running back end to another (for
/// example an upgraded build) while its front end stays up; see <see cref="MemberHandover"/> and
/// docs/owner-binding.md "Back-end handover". Progress goes to stderr, the summary to stdout.
/// </summary>
internal static class MigrateMemberCommand
{
    public static Command Create()
    {
        var from = new Option<string>("--from") { Description = "The source back end's owner socket (its pf.sock).", HelpName = "PATH", Required = true };
        var to = new Option<string>("--to") { Description = "The target back end's owner socket.", HelpName = "PATH", Required = true };
        // Members are VFs, numbered from 1.
        var member = new Option<int>("--member") { Description = "The VF to move (its id on the source).", HelpName = "N", Required = true, CustomParser = CliValues.Int(1, ushort.MaxValue) };
        var toMember = new Option<int?>("--to-member")
        {
            Description = "The VF of the target that takes it over (default: the same id); it must have no front end.",
            HelpName = "N",
            CustomParser = r => CliValues.Int(1, ushort.MaxValue)(r),
        };
        var command = new Command("migrate-member",
            "Move a VF to another back end without its guest restarting: freeze it, stream its device parts into a VF of the target, " +
            "hand its socket path over; the front end reconnects (QEMU: reconnect=) to the same path and finds it as it was.");
        command.Options.Add(from);
        command.Options.Add(to);
        command.Options.Add(member);
        command.Options.Add(toMember);
        command.SetAction((r, cancel) => RunAsync(r.GetValue(from)!, r.GetValue(member), r.GetValue(to)!, r.GetValue(toMember) ?? r.GetValue(member), cancel));
        return command;
    }

    private static async Task<int> RunAsync(string fromSocket, int member, string toSocket, int toMember, CancellationToken cancel)
    {
        var clock = Stopwatch.StartNew();
        void Show(HandoverProgress p) =>
            Console.Error.WriteLine($"[{clock.Elapsed.TotalMilliseconds,8:0.0} ms] {p.Stage}{(p.Bytes > 0 ? $" ({p.Bytes} bytes)" : "")}");
        try
        {
            using var source = AdminCommand.Connect(fromSocket);
            using var target = AdminCommand.Connect(toSocket);
            Show(new HandoverProgress($"connected to {fromSocket} and {toSocket} as their owner driver"));
            // Progress is written as it happens (not through a SynchronizationContext): a handover takes milliseconds.
            var done = await MemberHandover.RunAsync(source, (ulong)member, target, (ulong)toMember, new Reporter(Show), cancel);
            Console.Out.WriteLine($"VF {member} of {fromSocket} moved to VF {toMember} of {toSocket}: {done.Bytes} bytes of device parts " +
                $"({done.SourceProfile} → {done.TargetProfile}) in {done.Streaming.TotalMilliseconds:0.0} ms; member stopped for " +
                $"{done.Stopped.TotalMilliseconds:0.0} ms; {done.SocketPath} is served by the target now");
            return 0;
        }
        catch (Exception e) when (CliValues.IsReported(e))
        {
            return CliValues.Fail("migrate-member", e.Message);
        }
    }

    private sealed class Reporter(Action<HandoverProgress> show) : IProgress<HandoverProgress>
    {
        public void Report(HandoverProgress value) => show(value);
    }
}
