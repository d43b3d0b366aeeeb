using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// The real daemon as a child process (so a crash shows as the child dying, never as the test host
/// dying), serving the owner and four VFs, while VF1 and VF2 forward frames to each other for the
/// whole test. VF3 is left to a hostile front end and VF4 to whatever traffic partner it needs.
/// Every check names the step, the test's context (its seed) and ends with the daemon's last log lines.
/// </summary>
public sealed class GroupUnderAttack : IDisposable
{
    public const int Vfs = 4;
    public const int HostileVf = 3;
    public const int PartnerVf = 4;
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Growth of the daemon's counters that is runtime noise, not a leak, once a warm-up round of
    /// the same hostility ran before the baseline: the thread pool may add a few workers (they
    /// retire only after 20 s idle; the status timer alone wakes some), each with a stack, a guard
    /// page and a malloc arena (ProcCounters allows VmSize for each); tiered compilation keeps
    /// re-compiling hot methods for a while, mapping more code pages (twice: W^X double mapping);
    /// the GC may map a few heap areas. Guest memory gets no slack at all (see ProcCounters), and a
    /// leak of one descriptor or mapping per hostile connection exceeds this many times over.
    /// </summary>
    public static readonly ProcCounters.Slack Noise = new(Fds: 4, Threads: 6, Maps: 64, VmSizeKb: 64 << 10);

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-h-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly FrontEndSession _vf1, _vf2;
    private int _logAtCheckpoint;

    public GroupUnderAttack(string context)
    {
        Context = context;
        Directory.CreateDirectory(_dir);
        Daemon = DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", Vfs.ToString()]);
        try
        {
            var sockets = Enumerable.Range(1, Vfs).Select(Socket).Append(Path.Combine(_dir, "pf.sock")).ToArray();
            Daemon.WaitUntil(() => sockets.All(File.Exists) && Daemon.Output.Contains("ready:"), Deadline, "the group's sockets");
            _vf1 = FrontEndSession.Start(Socket(1));
            _vf2 = FrontEndSession.Start(Socket(2));
            Pair = new ForwardingPair(_vf1, MacOf(1), _vf2, MacOf(2), name: "vf1-vf2");
            if (!Pair.WaitForMoreThan(0, Deadline))
                Fail("VF1 and VF2 never forwarded a frame before any hostility");
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Said with every failure: the seed and whatever else replays the test.</summary>
    public string Context { get; set; }
    public DaemonProcess Daemon { get; }
    public ForwardingPair Pair { get; } = null!;

    /// <summary>VF n's MAC with the default MacBase 02:56:56:00:00:00.</summary>
    public static Mac MacOf(int vf) => new(0x02_56_56_00_00_00UL + (ulong)vf);

    public string Socket(int vf) => Path.Combine(_dir, $"vf{vf}.sock");

    /// <summary>
    /// The daemon is alive, logged no error since the last checkpoint (an error means an exception
    /// escaped to a catch-all: input that validation missed), and VF1/VF2 frames keep arriving intact.
    /// </summary>
    public void Checkpoint(string step)
    {
        if (Daemon.HasExited)
            Fail($"the daemon died (exit code {Daemon.ExitCode}) by {step}");
        int end = Daemon.OutputLength;
        var logged = Daemon.OutputFrom(_logAtCheckpoint);
        _logAtCheckpoint = end;
        var errors = logged.Split('\n').SkipWhile(l => !IsError(l)).Take(30).ToList();
        if (errors.Count > 0)
            Fail($"the daemon logged an error by {step}:\n{string.Join('\n', errors)}");
        // Frames that arrive from now on, not ones counted before: a hostile act that blocks the data
        // path takes effect a moment after the step that did it.
        if (!Pair.WaitForMoreThan(Pair.Delivered + FreshFrames, Deadline))
            Fail(Daemon.WaitForExit(TimeSpan.FromSeconds(2))
                ? $"the daemon died (exit code {Daemon.ExitCode}) by {step}"
                : Pair.Problems.Count > 0
                ? $"forwarding between VF1 and VF2 went wrong by {step}"
                : $"forwarding between VF1 and VF2 stopped by {step}: fewer than {FreshFrames} frames in {Deadline.TotalSeconds:0} s");
    }

    /// <summary>A round trip of the pair (a batch each way): the data path went round its loop several times.</summary>
    private const int FreshFrames = 16;

    /// <summary>
    /// A well-behaved front end on <paramref name="vf"/> negotiates and exchanges frames both ways
    /// with one on the partner VF (each sending from its own MAC).
    /// </summary>
    public void AssertDeviceUsable(int vf, string step)
    {
        try
        {
            using var fe = new NetFrontEnd(Socket(vf));
            using var peer = new NetFrontEnd(Socket(PartnerVf));
            fe.PostRx(16);
            peer.PostRx(16);
            foreach (var (from, fromVf, to, toVf) in new[] { (fe, vf, peer, PartnerVf), (peer, PartnerVf, fe, vf) })
            {
                var frame = NetFrontEnd.Frame(MacOf(toVf).ToString(), MacOf(fromVf).ToString(), $"well-behaved {fromVf}->{toVf} after {step}");
                from.Send(frame);
                // Skip anything else that reaches it (a flood from before); the frame itself must come.
                try
                {
                    while (!to.Receive().Frame.AsSpan().SequenceEqual(frame)) { }
                }
                catch (TimeoutException)
                {
                    throw new TimeoutException($"VF{toVf} did not receive a unicast frame from VF{fromVf} within 10 s " +
                        $"(was VF{toVf}'s MAC learned on another port, e.g. from a spoofed source or RARP?)");
                }
            }
        }
        catch (Exception e) when (e is TimeoutException or FrontEndException or InvalidOperationException or Interop.NativeException)
        {
            Fail($"VF{vf} is not usable by a well-behaved front end after {step}: {e.GetType().Name}: {e.Message}");
        }
        Checkpoint($"the well-behaved front end on VF{vf} after {step}");
    }

    /// <summary>The daemon's counters now (call with only VF1 and VF2 connected).</summary>
    public ProcCounters Counters() => ProcCounters.Read(Daemon.Id);

    /// <summary>Waits until the daemon holds no more than <paramref name="baseline"/> plus noise.</summary>
    public void AssertBackToBaseline(ProcCounters baseline, string step)
    {
        var deadline = DateTime.UtcNow + Deadline;
        string? excess;
        ProcCounters now;
        while ((excess = (now = Counters()).ExcessOver(baseline, Noise)) != null)
        {
            if (Daemon.HasExited)
                Fail($"the daemon died (exit code {Daemon.ExitCode}) after {step}");
            if (DateTime.UtcNow > deadline)
                Fail($"after {step} the daemon still holds more than before ({Deadline.TotalSeconds:0} s after the hostile front end left): {excess}" +
                     $"\nbaseline: {baseline}\nnow:      {now}");
            Thread.Sleep(100);
        }
        Checkpoint($"the counter check after {step}");
    }

    private static bool IsError(string line) => line.Contains(" fail: ") || line.Contains(" crit: ");

    /// <summary>Lines the daemon logged at warning level or above so far.</summary>
    public int WarningLines() => Daemon.Output.Split('\n').Count(l => l.Contains(" warn: ") || IsError(l));

    /// <summary>The last lines the daemon logged.</summary>
    public string Tail(int lines = 40)
    {
        var all = Daemon.Output.Split('\n');
        return string.Join('\n', all.Skip(Math.Max(0, all.Length - lines)));
    }

    /// <summary>Fails the test with the step, the context, the forwarding state and the daemon's last words.</summary>
    public void Fail(string what)
    {
        string problems = Pair == null ? "" : string.Join("\n  ", Pair.Problems);
        string state = Daemon.HasExited ? $"exited with code {Daemon.ExitCode}" : "running";
        Assert.Fail($"{what}\n{Context}\nVF1/VF2 forwarding: {Pair}" +
                    (problems.Length > 0 ? $"\n  {problems}" : "") +
                    $"\ndaemon {state}; its last log lines:\n{Tail()}");
    }

    public void Dispose()
    {
        // For replays: keep the daemon's whole log where VUV_DAEMON_LOG_DIR says (nothing is kept otherwise).
        if (Environment.GetEnvironmentVariable("VUV_DAEMON_LOG_DIR") is { Length: > 0 } logDir && Daemon != null)
            File.WriteAllText(Path.Combine(logDir, $"daemon-{Daemon.Id}.log"), Daemon.Output);
        Pair?.Dispose();
        _vf1?.Dispose();
        _vf2?.Dispose();
        Daemon?.Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }
}
