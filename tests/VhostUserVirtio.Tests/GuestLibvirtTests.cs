using System.Diagnostics;
using System.Text;
using System.Xml.Linq;
using VhostUserVirtio.Tests.Support;
using Xunit.Abstractions;

namespace VhostUserVirtio.Tests;

/// <summary>
/// libvirt as an operator uses it: two domains (TCG, memfd shared memory, the repository's guest
/// image) whose NICs are the &lt;interface type='vhostuser'&gt; of qemu-configs/libvirt-interface.xml,
/// read from that file, ping each other through the daemon; once with the daemon serving the sockets,
/// once with QEMU serving them. QEMU runs as libvirt-qemu, so the daemon's sockets need
/// --socket-group and --socket-mode, and everything lives in a folder under /tmp it can reach.
/// </summary>
[Trait("tier", "qemu")]
public sealed class GuestLibvirtTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan GuestDeadline = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan DaemonDeadline = TimeSpan.FromSeconds(30);
    private static readonly XNamespace Qemu = "http://libvirt.org/schemas/domain/qemu/1.0";
    private const string QemuUser = "libvirt-qemu";

    private readonly string _root = Directory.CreateTempSubdirectory("vuv-libvirt-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    private readonly int _metricsPort = MetricsScrape.FreePort();

    private string Sockets => Path.Combine(_root, "sockets");

    private void Log(string line)
    {
        try { output.WriteLine(line); }
        catch (InvalidOperationException) { } // after the test ended
    }

    [Fact]
    public void Two_domains_ping_each_other_through_the_daemon_serving_their_sockets() => PingThroughDaemon(qemuServes: false);

    [Fact]
    public void Two_domains_ping_each_other_through_the_daemon_connecting_to_sockets_qemu_serves() => PingThroughDaemon(qemuServes: true);

    private void PingThroughDaemon(bool qemuServes)
    {
        PrepareFolder();
        string[] macs = ["02:56:56:00:00:01", "02:56:56:00:00:02"];
        string[] ips = ["10.77.0.1", "10.77.0.2"];
        var clock = Stopwatch.StartNew();
        var daemon = StartDaemon(qemuServes);
        try
        {
            using var libvirt = LibvirtDaemon.Start(_root, Log);
            Log($"libvirt {libvirt.Version.Replace('\n', ';')}");
            var names = new string[2];
            for (int i = 0; i < 2; i++)
            {
                names[i] = $"vuv-{(qemuServes ? "srv" : "cli")}-{i + 1}-{Guid.NewGuid().ToString("N")[..6]}";
                string xml = WriteDomain(names[i], i + 1, macs[i], GuestScript(macs[i], ips[i], ips[1 - i]), qemuServes, sharedMemory: true);
                var started = Stopwatch.StartNew();
                // In server mode virsh returns only once the daemon has connected (libvirt has no wait=off).
                libvirt.CreateDomain(names[i], xml, TimeSpan.FromSeconds(120));
                Log($"{names[i]}: virsh create took {started.Elapsed.TotalSeconds:F1} s");
            }
            for (int i = 0; i < 2; i++)
            {
                string console = WaitForConsole(names[i], "PING-RESULT", daemon);
                var ping = Assert.Single(GuestScripts.Parse(console.Split('\n')).Pings);
                Assert.True(ping.Received > 0, $"{names[i]} got no reply from {ips[1 - i]}:\n{console}\n{daemon.Output}");
                Log($"{names[i]}: {ping.Received}/{ping.Transmitted} replies, avg {ping.AvgMs} ms, {clock.Elapsed.TotalSeconds:F1} s into the test");
                Assert.Contains($"vf{i + 1}: front end connected", daemon.Output, StringComparison.Ordinal);
            }
            AssertCountersVisible(qemuServes);
            if (!qemuServes)
            {
                // A restarted daemon binds its sockets again with the same group and mode, so QEMU
                // (libvirt-qemu) reconnects by itself and the guests reach each other again.
                int answersBefore = PeerAnswers(names[0]);
                daemon.Terminate();
                Assert.True(daemon.WaitForExit(DaemonDeadline), "daemon did not stop:\n" + daemon.Output);
                daemon.Dispose();
                var restart = Stopwatch.StartNew();
                daemon = StartDaemon(qemuServes);
                var restarted = daemon;
                restarted.WaitUntil(() => restarted.Output.Contains("vf1: front end connected", StringComparison.Ordinal) &&
                    restarted.Output.Contains("vf2: front end connected", StringComparison.Ordinal), GuestDeadline, "QEMU reconnecting to vf1 and vf2");
                Log($"both QEMUs reconnected {restart.Elapsed.TotalSeconds:F1} s after the restart began");
                var deadline = Stopwatch.StartNew();
                while (PeerAnswers(names[0]) <= answersBefore + 2 && deadline.Elapsed < GuestDeadline)
                    Thread.Sleep(500);
                Assert.True(PeerAnswers(names[0]) > answersBefore + 2, $"no pings answered after the restart:\n{ReadConsole(names[0])}\n{daemon.Output}");
                Log($"{names[0]}: pings answered again {restart.Elapsed.TotalSeconds:F1} s after the restart began");
            }
            foreach (var name in names)
                libvirt.Destroy(name);
        }
        finally
        {
            daemon.Dispose();
        }
    }

    /// <summary>
    /// `virsh domifstat` cannot see a vhost-user NIC's counters; `vhost-virtio ctl ports` and the
    /// Prometheus endpoint show both domains' VFs connected, with the pings they exchanged counted each way.
    /// </summary>
    private void AssertCountersVisible(bool qemuServes)
    {
        using var table = DaemonProcess.Run("ctl", "--socket-dir", Sockets, "ports");
        Assert.True(table.ExitCode == 0, table.Output);
        Log($"vhost-virtio ctl ports ({(qemuServes ? "QEMU serves" : "the daemon serves")}):\n{table.StandardOutput}");
        using var json = DaemonProcess.Run("ctl", "--socket-dir", Sockets, "--json", "ports");
        Assert.True(json.ExitCode == 0, json.Output);
        using var doc = System.Text.Json.JsonDocument.Parse(json.StandardOutput);
        var ports = doc.RootElement.GetProperty("result").GetProperty("ports").EnumerateArray()
            .ToDictionary(p => p.GetProperty("name").GetString()!);
        foreach (var vf in new[] { "vf1", "vf2" })
        {
            var port = ports[vf];
            Assert.True(port.GetProperty("connected").GetBoolean(), $"{vf} not connected:\n{table.StandardOutput}");
            var counters = port.GetProperty("counters");
            Assert.True(counters.GetProperty("txPackets").GetInt64() > 0 && counters.GetProperty("rxPackets").GetInt64() > 0,
                $"{vf} counted no traffic:\n{table.StandardOutput}");
        }
        string scrape = MetricsScrape.Get(_metricsPort);
        Log("metrics (VF lines):\n" + string.Join('\n', scrape.Split('\n').Where(l => l.Contains("port=\"vf", StringComparison.Ordinal) && !l.EndsWith(" 0", StringComparison.Ordinal))));
        foreach (var vf in new[] { "vf1", "vf2" })
        {
            long packets = ports[vf].GetProperty("counters").GetProperty("rxPackets").GetInt64();
            var line = scrape.Split('\n').Single(l => l.StartsWith($"vhost_virtio_port_packets_total{{port=\"{vf}\",role=\"vf\",direction=\"rx\"}} ", StringComparison.Ordinal));
            Assert.True(long.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture) >= packets, line);
            Assert.Contains($"vhost_virtio_port_connected{{port=\"{vf}\",role=\"vf\"}} 1", scrape, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void A_domain_without_shared_memory_gets_a_warning_instead_of_silence()
    {
        PrepareFolder();
        using var daemon = StartDaemon(qemuServes: false);
        using var libvirt = LibvirtDaemon.Start(_root, Log);
        string name = $"vuv-private-{Guid.NewGuid().ToString("N")[..6]}";
        string xml = WriteDomain(name, 1, "02:56:56:00:00:01", "sleep 120\n", qemuServes: false, sharedMemory: false);
        libvirt.CreateDomain(name, xml, TimeSpan.FromSeconds(120));
        // The guest's driver sets the device up (DRIVER_OK) a few seconds into its boot.
        daemon.WaitUntil(() => daemon.Output.Contains("have no guest memory", StringComparison.Ordinal), GuestDeadline,
            "the warning about rings without guest memory");
        Assert.Contains("vf1: queue 0 is ready but the front end has sent no guest memory", daemon.Output, StringComparison.Ordinal);
        libvirt.Destroy(name);
    }

    /// <summary>The test's folder under /tmp, which libvirt-qemu must be able to walk through.</summary>
    private void PrepareFolder()
    {
        Run("chmod", "0755", _root);
    }

    private DaemonProcess StartDaemon(bool qemuServes)
    {
        DaemonProcess daemon;
        if (qemuServes)
        {
            // QEMU creates the sockets, so libvirt-qemu must be able to write in their folder.
            Directory.CreateDirectory(Sockets);
            Run("chgrp", QemuUser, Sockets);
            Run("chmod", "0770", Sockets);
            daemon = DaemonProcess.Start(["serve", "--socket-dir", Sockets, "--vfs", "2", "--client", "--metrics-listen", $"127.0.0.1:{_metricsPort}"]);
        }
        else
        {
            daemon = DaemonProcess.Start(["serve", "--socket-dir", Sockets, "--vfs", "2", "--socket-group", QemuUser, "--socket-mode", "0660",
                "--metrics-listen", $"127.0.0.1:{_metricsPort}"]);
        }
        daemon.WaitUntil(() => daemon.Output.Contains("ready:", StringComparison.Ordinal), DaemonDeadline, "the ready line");
        return daemon;
    }

    /// <summary>
    /// A domain whose NIC is the documented interface for this mode (path and MAC set for VF
    /// <paramref name="vf"/>), with its &lt;qemu:override&gt;; the kernel and an initrd with
    /// <paramref name="script"/> are copied into the test folder, since libvirt hands them to libvirt-qemu.
    /// </summary>
    private string WriteDomain(string name, int vf, string mac, string script, bool qemuServes, bool sharedMemory)
    {
        var image = GuestImage.Ensure();
        string kernel = Path.Combine(_root, $"vmlinuz-{vf}"), initrd = Path.Combine(_root, $"initrd-{vf}.img"), console = Path.Combine(_root, $"console-{name}.log");
        File.Copy(image.Kernel, kernel, overwrite: true);
        using (var o = File.Create(initrd))
        {
            using (var i = File.OpenRead(image.Initramfs))
                i.CopyTo(o);
            while (o.Position % 4 != 0)
                o.WriteByte(0);
            o.Write(Cpio.Create([("/test.sh", Encoding.UTF8.GetBytes(script), 0x1ED /* 0755 */)]));
        }

        var documented = XDocument.Load(Path.Combine(GuestImage.RepositoryRoot, "qemu-configs", "libvirt-interface.xml")).Root!;
        string mode = qemuServes ? "server" : "client";
        var nic = new XElement(documented.Descendants("interface").Single(e => (string?)e.Element("source")?.Attribute("mode") == mode));
        string alias = (string)nic.Element("alias")!.Attribute("name")!;
        nic.Element("source")!.SetAttributeValue("path", Path.Combine(Sockets, $"vf{vf}.sock"));
        nic.Element("mac")!.SetAttributeValue("address", mac);
        var overrideDevice = new XElement(documented.Element(Qemu + "override")!.Elements(Qemu + "device").Single(d => (string?)d.Attribute("alias") == alias));

        var domain = new XElement("domain", new XAttribute("type", "qemu"), new XAttribute(XNamespace.Xmlns + "qemu", Qemu.NamespaceName),
            new XElement("name", name),
            new XElement("memory", new XAttribute("unit", "MiB"), 256),
            new XElement("vcpu", 1),
            sharedMemory ? new XElement(documented.Element("memoryBacking")!) : null,
            new XElement("os",
                new XElement("type", new XAttribute("arch", "x86_64"), new XAttribute("machine", "q35"), "hvm"),
                new XElement("kernel", kernel), new XElement("initrd", initrd),
                new XElement("cmdline", "console=ttyS0 panic=-1 quiet")),
            new XElement("cpu", new XAttribute("mode", "custom"), new XAttribute("match", "exact"),
                new XElement("model", new XAttribute("fallback", "allow"), "qemu64")),
            new XElement("on_poweroff", "destroy"), new XElement("on_reboot", "destroy"), new XElement("on_crash", "destroy"),
            new XElement("devices",
                new XElement("emulator", "/usr/bin/qemu-system-x86_64"),
                nic,
                new XElement("serial", new XAttribute("type", "file"),
                    new XElement("source", new XAttribute("path", console)), new XElement("target", new XAttribute("port", 0))),
                new XElement("memballoon", new XAttribute("model", "none"))),
            new XElement(Qemu + "override", overrideDevice));
        string path = Path.Combine(_root, name + ".xml");
        domain.Save(path);
        return path;
    }

    private string ConsolePath(string name) => Path.Combine(_root, $"console-{name}.log");

    private string ReadConsole(string name)
    {
        try { return File.Exists(ConsolePath(name)) ? File.ReadAllText(ConsolePath(name)) : ""; }
        catch (IOException) { return ""; }
    }

    /// <summary>Pings to the peer answered so far by the guest's endless loop after its first result.</summary>
    private int PeerAnswers(string name) =>
        ReadConsole(name).Split('\n').Count(l => l.Contains(PeerAnswersMarker, StringComparison.Ordinal));

    /// <summary>The guest's console once a line contains <paramref name="marker"/> (libvirt writes the serial port to a file).</summary>
    private string WaitForConsole(string name, string marker, DaemonProcess daemon)
    {
        var clock = Stopwatch.StartNew();
        string text = "";
        while (clock.Elapsed < GuestDeadline)
        {
            text = ReadConsole(name);
            if (text.Contains(marker, StringComparison.Ordinal))
                return text;
            if (text.Contains(QemuGuest.TestExitMarker, StringComparison.Ordinal))
                break;
            Thread.Sleep(500);
        }
        Assert.Fail($"{name}: no '{marker}' within {GuestDeadline.TotalSeconds:F0} s. Console:\n{text}\n{LibvirtDaemon.QemuLog(name)}\nDaemon:\n{daemon.Output}");
        return text;
    }

    private const string PeerAnswersMarker = "PEER-ANSWERS";

    /// <summary>
    /// Configures the NIC, waits for the peer to answer, pings it five times and reports; then pings it
    /// once a second for good, printing PEER-ANSWERS for each reply, until the test destroys the domain.
    /// </summary>
    private static string GuestScript(string mac, string ip, string peer) => $$"""
        {{GuestScripts.ShellFunctions}}
        i=$(find_if {{mac.ToLowerInvariant()}}) || { echo "GUEST-ERROR no interface with MAC {{mac}}"; exit 2; }
        echo 1 > /proc/sys/net/ipv6/conf/$i/disable_ipv6 2>/dev/null
        must ip addr add {{ip}}/24 dev $i
        must ip link set $i up
        wait_carrier $i 30
        report_link {{mac}} $i
        n=0; until ping -c 1 -W 1 {{peer}} >/dev/null 2>&1 || [ $n -ge 180 ]; do n=$((n + 1)); done
        out=$(ping -c 5 -i 0.5 -W 2 -w 20 {{peer}} 2>&1); echo "$out"
        tx=$(echo "$out" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')
        rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
        rtt=$(echo "$out" | sed -n 's|^round-trip min/avg/max = \([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\) ms.*|min=\1 avg=\2 max=\3|p')
        echo "PING-RESULT from={{ip}} to={{peer}} transmitted=${tx:-0} received=${rx:-0} $rtt"
        report_stats {{mac}} $i
        while true; do ping -c 1 -W 1 {{peer}} >/dev/null 2>&1 && echo "{{PeerAnswersMarker}}"; sleep 1; done

        """;

    private static void Run(string program, params string[] args)
    {
        var r = LibvirtDaemon.Run(program, args, TimeSpan.FromSeconds(30));
        Assert.True(r.Exit == 0, $"{program} {string.Join(' ', args)}: {r.Output}");
    }
}
