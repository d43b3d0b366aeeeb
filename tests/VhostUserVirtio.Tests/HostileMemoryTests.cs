using System.Text.RegularExpressions;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Front ends that play tricks with the files behind guest memory, against the real daemon as a
/// child process: a fault (SIGBUS) there shows up as the child dying, never as the test host
/// dying. The test never maps a file it truncates, so only the daemon could fault.
/// </summary>
[Trait("tier", "daemon")]
public sealed partial class HostileMemoryTests : IDisposable
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);
    private const ulong MiB = 1 << 20;
    private const ulong TiB = 1UL << 40;
    /// <summary>Where the tests put an extra region, clear of the session's RAM (guest physical, front-end virtual).</summary>
    private const ulong ExtraGpa = 0x1_0000_0000, ExtraUva = 0x7f10_0000_0000;

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vuv-m-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly List<IDisposable> _cleanup = new();

    private readonly ITestOutputHelper _log;

    public HostileMemoryTests(ITestOutputHelper log)
    {
        _log = log;
        Directory.CreateDirectory(_dir);
    }

    public void Dispose()
    {
        for (int i = _cleanup.Count - 1; i >= 0; i--)
            _cleanup[i].Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private T Owned<T>(T item) where T : IDisposable
    {
        _cleanup.Add(item);
        return item;
    }

    private DaemonProcess StartDaemon(int vfs, params string[] options)
    {
        var daemon = Owned(DaemonProcess.Start(["serve", "--socket-dir", _dir, "--vfs", vfs.ToString(), .. options]));
        var sockets = Enumerable.Range(1, vfs).Select(Vf).ToArray();
        daemon.WaitUntil(() => sockets.All(File.Exists) && daemon.Output.Contains("ready:"), Deadline, "the VF sockets and the ready line");
        return daemon;
    }

    private string Vf(int n) => Path.Combine(_dir, $"vf{n}.sock");

    private NetFrontEnd Connect(int vf) => Owned(new NetFrontEnd(Vf(vf)));

    private static MemoryRegionDescription Extra(ulong size, ulong mmapOffset = 0) => new(ExtraGpa, size, ExtraUva, mmapOffset);

    /// <summary>ADD_MEM_REG with a failure ack asked for; false when the daemon refused it.</summary>
    private static bool TryAddRegion(NetFrontEnd fe, MemoryRegionDescription region, FileDescriptor fd)
    {
        try
        {
            fe.Session.Connection.Request(FrontendRequest.AddMemReg, SingleRegionPayload.Write(region), new[] { fd.Number });
            return true;
        }
        catch (FrontEndException)
        {
            return false;
        }
    }

    /// <summary>SET_MEM_TABLE with the session's own RAM plus <paramref name="extra"/>; false when refused.</summary>
    private static bool TrySetTableWith(NetFrontEnd fe, MemoryRegionDescription extra, FileDescriptor fd)
    {
        var ram = fe.Session.Ram;
        var table = ram.Describe().Append(extra).ToArray();
        try
        {
            fe.Session.Connection.Request(FrontendRequest.SetMemTable, MemoryTablePayload.Write(table), ram.Fds.Append(fd.Number).ToArray());
            return true;
        }
        catch (FrontEndException)
        {
            return false;
        }
    }

    private static void RemoveRegion(NetFrontEnd fe, MemoryRegionDescription region) =>
        fe.Session.Connection.Request(FrontendRequest.RemMemReg, SingleRegionPayload.Write(region));

    /// <summary>Puts one readable buffer of the transmit queue at <paramref name="gpa"/> and kicks: the daemon reads it.</summary>
    private static void TransmitFrom(NetFrontEnd fe, ulong gpa, uint length)
    {
        fe.Tx.AddChain(new BufferSpec[] { new(gpa, length, false) });
        fe.Tx.Notify();
    }

    /// <summary>Fails with the daemon's output if it died (a SIGBUS, say).</summary>
    private static void AssertAlive(DaemonProcess daemon, string when)
    {
        if (daemon.WaitForExit(TimeSpan.Zero))
            Assert.Fail($"the daemon died {when} (exit {daemon.ExitCode}):\n{Tail(daemon.Output)}");
    }

    /// <summary>Waits for a log line (the daemon's stderr arrives asynchronously, after its replies).</summary>
    private static void WaitForLog(DaemonProcess daemon, string pattern) =>
        daemon.WaitUntil(() => Regex.IsMatch(daemon.Output, pattern), Deadline, $"a log line matching /{pattern}/");

    private static string Tail(string text, int lines = 40) => string.Join('\n', text.Split('\n').TakeLast(lines));

    [Fact]
    public void Truncating_accepted_sealable_memory_fails_and_the_daemon_keeps_forwarding()
    {
        var daemon = StartDaemon(3);
        var vf1 = Connect(1);
        var ram = vf1.Session.Ram.Regions[0];

        var e = Assert.Throws<NativeException>(() => ram.Fd.SetLength(0));
        Assert.Equal(1, e.Errno); // EPERM: the daemon sealed it when it accepted the table

        var vf2 = Connect(2);
        var vf3 = Connect(3);
        NetCheck.AssertSwitches(vf1, vf2);
        NetCheck.AssertSwitches(vf2, vf3);
        AssertAlive(daemon, "after the truncation attempt");
    }

    [Fact]
    public void An_unsealable_memfd_is_refused_so_truncating_it_cannot_crash_the_daemon()
    {
        var daemon = StartDaemon(3);
        var vf1 = Connect(1);
        var frame = NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", "02:56:56:00:00:01", "from unsealable memory");
        using var fd = MemFd.Create("unsealable", (long)MiB, allowSealing: false);
        using (var map = MemoryMapping.Map(fd, MiB))
            unsafe { frame.CopyTo(new Span<byte>((byte*)map.Address + NetFrontEnd.HeaderSize, frame.Length)); }

        bool accepted = TryAddRegion(vf1, Extra(MiB), fd);
        fd.SetLength(0); // what a hostile front end does next
        TransmitFrom(vf1, ExtraGpa, (uint)(NetFrontEnd.HeaderSize + frame.Length));
        // Refused, the buffer is outside guest memory and only vf1's ring breaks; accepted, the
        // daemon would read a truncated page and die of SIGBUS.
        daemon.WaitUntil(() => daemon.Output.Contains("outside guest memory"), Deadline, "vf1's transmit ring to break");

        Assert.False(accepted, "an unsealable memfd was accepted");
        WaitForLog(daemon, "refused: region cannot be sealed against shrinking: .*MFD_ALLOW_SEALING");
        NetCheck.AssertSwitches(Connect(2), Connect(3));
        AssertAlive(daemon, "after the unsealable memfd");
    }

    [Fact]
    public void Allow_unsealed_memory_accepts_an_unsealable_memfd_with_a_warning_naming_the_region()
    {
        var daemon = StartDaemon(2, "--allow-unsealed-memory");
        Assert.Matches("warn: .*unsealed guest memory allowed", daemon.Output);
        var vf1 = Connect(1);
        var vf2 = Connect(2);
        var frame = NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", "02:56:56:00:00:01", "from unsealed memory");
        using var fd = MemFd.Create("unsealable", (long)MiB, allowSealing: false);
        using var map = MemoryMapping.Map(fd, MiB);
        unsafe { frame.CopyTo(new Span<byte>((byte*)map.Address + NetFrontEnd.HeaderSize, frame.Length)); }

        Assert.True(TryAddRegion(vf1, Extra(MiB), fd), "refused with the option:\n" + Tail(daemon.Output));
        WaitForLog(daemon, $"warn: .*vf1: accepted unsealed memory region gpa 0x{ExtraGpa:x}\\.\\.0x{ExtraGpa + MiB:x}");

        vf2.PostRx(2);
        TransmitFrom(vf1, ExtraGpa, (uint)(NetFrontEnd.HeaderSize + frame.Length));
        Assert.Equal(frame, vf2.Receive().Frame);
    }

    [Fact]
    public void Toggling_the_file_size_while_regions_are_sent_never_crashes_the_daemon()
    {
        var daemon = StartDaemon(2);
        var vf1 = Connect(1);
        const ulong size = 2 * MiB;
        var region = Extra(size);
        using var attacker = new SizeToggler(big: (long)size, small: 4096);
        int attempts = 0, accepted = 0;
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(4);
        while (DateTime.UtcNow < until)
        {
            using var fd = MemFd.Create("race", (long)size);
            bool add = attempts++ % 2 == 0;
            attacker.Begin(fd);
            bool ok = add ? TryAddRegion(vf1, region, fd) : TrySetTableWith(vf1, region, fd);
            attacker.End();
            if (!ok)
                continue;
            accepted++;
            // Make the daemon read the region's last bytes: a file shorter than the region faults it.
            TransmitFrom(vf1, ExtraGpa + size - 64, 64);
            try
            {
                vf1.Tx.WaitUsed();
            }
            catch (TimeoutException)
            {
                AssertAlive(daemon, $"reading region {accepted} of {attempts} sent");
                throw;
            }
            Assert.True(fd.IsSealedAgainstShrink, "an accepted region's file is not sealed against shrinking");
            Assert.True(fd.GetFileSize() >= (long)size, $"accepted region {accepted} was sealed at {fd.GetFileSize()} bytes, short of {size}");
            if (add)
                RemoveRegion(vf1, region);
            else
                vf1.Session.Connection.SetMemTable(vf1.Session.Ram); // back to the RAM alone, so the next ADD does not overlap
        }
        _log.WriteLine($"{attempts} regions sent, {accepted} accepted, {attacker.Shrinks} shrinks");
        AssertAlive(daemon, "after the race");
        Assert.True(accepted > 0, $"none of {attempts} regions was accepted:\n{Tail(daemon.Output)}");
        Assert.True(attacker.Shrinks > 0, "the file was never shrunk");
        NetCheck.AssertSwitches(vf1, Connect(2));
    }

    [Fact]
    public void A_region_far_into_a_sparse_file_maps_about_its_own_size_and_carries_frames()
    {
        var daemon = StartDaemon(2);
        var vf1 = Connect(1);
        var vf2 = Connect(2);
        // 64 TiB into a sparse memfd, at an offset that is not even page aligned.
        const ulong lead = 0x1234, size = MiB;
        using var fd = MemFd.Create("sparse", (long)(64 * TiB + 2 * MiB));
        using var tail = MemoryMapping.Map(fd, 2 * MiB, 64 * TiB); // the test maps only the end, too

        long before = VmSizeKiB(daemon.Id);
        Assert.True(TryAddRegion(vf1, Extra(size, 64 * TiB + lead), fd), "refused:\n" + Tail(daemon.Output));
        long grown = (VmSizeKiB(daemon.Id) - before) * 1024;
        _log.WriteLine($"VmSize grew by {grown} bytes for a {size}-byte region at file offset 0x{64 * TiB + lead:x}");
        Assert.True(grown < 1L << 30, $"the daemon's address space grew by {grown} bytes for a {size}-byte region");

        // Transmit from the region, and receive into it.
        var outbound = NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", "02:56:56:00:00:01", "from 64 TiB in");
        Span<byte> region = Region(tail, lead, size);
        region[..NetFrontEnd.HeaderSize].Clear();
        outbound.CopyTo(region[NetFrontEnd.HeaderSize..]);
        vf2.PostRx(2);
        TransmitFrom(vf1, ExtraGpa, (uint)(NetFrontEnd.HeaderSize + outbound.Length));
        Assert.Equal(outbound, vf2.Receive().Frame);

        const ulong rxOffset = 0x8000;
        vf1.Rx.AddChain(new BufferSpec[] { new(ExtraGpa + rxOffset, 2048, true) });
        vf1.Rx.Notify();
        var inbound = NetFrontEnd.Frame("ff:ff:ff:ff:ff:ff", "02:56:56:00:00:02", "to 64 TiB in");
        vf2.Send(inbound);
        var (_, length) = vf1.Rx.WaitUsed();
        Assert.Equal(inbound, region.Slice((int)rxOffset + NetFrontEnd.HeaderSize, (int)length - NetFrontEnd.HeaderSize).ToArray());
        AssertAlive(daemon, "after the sparse region");
    }

    private static unsafe Span<byte> Region(MemoryMapping tail, ulong lead, ulong size) => new((byte*)tail.Address + lead, (int)size);

    [Fact]
    public void Max_guest_memory_refuses_a_table_over_it_and_the_old_table_stays()
    {
        var daemon = StartDaemon(2, "--max-guest-memory", "64M");
        var vf1 = Connect(1); // 16 MiB of RAM
        var vf2 = Connect(2);

        using (var big = MemFd.Create("big", (long)(64 * MiB)))
            Assert.False(TrySetTableWith(vf1, Extra(64 * MiB), big), "a table of 80 MiB was accepted under a 64 MiB limit");
        WaitForLog(daemon, "refused: memory table of 80 MiB does not fit this connection's limit of 64 MiB");
        NetCheck.AssertSwitches(vf1, vf2); // the old table is still in use

        using (var toomuch = MemFd.Create("too-much", (long)(49 * MiB)))
            Assert.False(TryAddRegion(vf1, Extra(49 * MiB), toomuch));
        using (var fits = MemFd.Create("fits", (long)(32 * MiB)))
            Assert.True(TryAddRegion(vf1, Extra(32 * MiB), fits), Tail(daemon.Output));
        NetCheck.AssertSwitches(vf2, vf1);
    }

    private static long VmSizeKiB(int pid)
    {
        var m = VmSizeLine().Match(File.ReadAllText($"/proc/{pid}/status"));
        Assert.True(m.Success, "no VmSize in /proc/PID/status");
        return long.Parse(m.Groups[1].Value);
    }

    [GeneratedRegex(@"VmSize:\s+(\d+) kB")]
    private static partial Regex VmSizeLine();

    /// <summary>
    /// A hostile front end's second thread: while a region is being sent, it grows and shrinks the
    /// file as fast as it can, and stops as soon as the file is sealed, so that if the seal landed
    /// while the file was small, it stays small.
    /// </summary>
    private sealed class SizeToggler : IDisposable
    {
        private readonly long _big, _small;
        private readonly Thread _thread;
        private readonly SemaphoreSlim _go = new(0), _idle = new(0);
        private FileDescriptor? _fd;
        private volatile bool _stop, _disposed;

        public SizeToggler(long big, long small)
        {
            _big = big;
            _small = small;
            _thread = new Thread(Run) { IsBackground = true, Name = "size toggler" };
            _thread.Start();
        }

        public long Shrinks { get; private set; }

        public void Begin(FileDescriptor fd)
        {
            _fd = fd;
            _stop = false;
            _go.Release();
        }

        public void End()
        {
            _stop = true;
            _idle.Wait();
        }

        private void Run()
        {
            while (true)
            {
                _go.Wait();
                if (_disposed)
                    return;
                var fd = _fd!;
                while (!_stop)
                {
                    fd.SetLength(_big);
                    try
                    {
                        fd.SetLength(_small);
                        Shrinks++;
                    }
                    catch (NativeException)
                    {
                        break; // sealed while big: the daemon sees a file that fits
                    }
                    if (fd.IsSealedAgainstShrink)
                        break; // sealed while small: a back end that read the size first is fooled
                }
                _idle.Release();
            }
        }

        public void Dispose()
        {
            _disposed = true;
            _go.Release();
            _thread.Join();
        }
    }
}
