using System.CommandLine;
using System.Globalization;
using System.Text;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// `vhost-virtio vdev …`: managed devices through the owner's transport virtqueue. Create, list,
/// inspect and destroy them, and read the transport state a VMM attached on vdev&lt;ID&gt;.sock drives.
/// </summary>
internal static class VdevCommand
{
    public static Command Create()
    {
        var socket = new Option<string>("--socket")
        {
            Description = "The owner's socket.",
            HelpName = "PATH",
            DefaultValueFactory = _ => "./sockets/pf.sock",
        };
        var vdev = new Command("vdev", "Managed devices (vdevs) through the owner's transport virtqueue; a VMM attaches one on vdev<ID>.sock.");
        vdev.Options.Add(socket);

        var create = new Command("create", "Create a virtio-net managed device (DEV_CREATE); prints its id and socket.");
        create.SetAction(r => Run(r.GetValue(socket)!, t =>
        {
            uint id = t.DevCreate(VirtioNetDeviceId);
            return $"vdev {id} created: attach a VMM on {Path.Combine(Path.GetDirectoryName(r.GetValue(socket)!) ?? ".", $"vdev{id}.sock")}\n";
        }));
        vdev.Subcommands.Add(create);

        var list = new Command("list", "List the managed devices (DEV_LIST).");
        list.SetAction(r => Run(r.GetValue(socket)!, t =>
        {
            var ids = t.DevList();
            return ids.Length == 0 ? "no managed devices\n" : string.Concat(ids.Select(id => $"vdev {id}\n"));
        }));
        vdev.Subcommands.Add(list);

        var info = new Command("info", "Show a managed device (DEV_INFO).");
        var infoId = IdArgument();
        info.Arguments.Add(infoId);
        info.SetAction(r => Run(r.GetValue(socket)!, t => Info(t, r.GetValue(infoId))));
        vdev.Subcommands.Add(info);

        var destroy = new Command("destroy", "Destroy a managed device (DEV_DESTROY); a VMM attached to it is disconnected.");
        var destroyId = IdArgument();
        destroy.Arguments.Add(destroyId);
        destroy.SetAction(r => Run(r.GetValue(socket)!, t =>
        {
            t.DevDestroy(r.GetValue(destroyId));
            return $"vdev {r.GetValue(destroyId)} destroyed\n";
        }));
        vdev.Subcommands.Add(destroy);

        var features = new Command("features", "Device-offered and driver-accepted features (DEV_FEATURES_GET, DRV_FEATURES_GET).");
        var featuresId = IdArgument();
        features.Arguments.Add(featuresId);
        features.SetAction(r => Run(r.GetValue(socket)!, t =>
        {
            ulong id = r.GetValue(featuresId);
            return $"vdev {id}: device features {Hex128(t.DevFeaturesGet(id))}\nvdev {id}: driver features {Hex128(t.DrvFeaturesGet(id))}\n";
        }));
        vdev.Subcommands.Add(features);
        vdev.Subcommands.Add(StatusCommand(socket));
        vdev.Subcommands.Add(CfgCommand(socket));

        var msi = new Command("msi", "One MSI vector of a managed device (MSI_GET): address, data, mask, pending.");
        var msiId = IdArgument();
        var vector = new Argument<ushort>("VECTOR") { Description = "The vector number.", CustomParser = r => (ushort)CliValues.Int(0, ushort.MaxValue)(r) };
        msi.Arguments.Add(msiId);
        msi.Arguments.Add(vector);
        msi.SetAction(r => Run(r.GetValue(socket)!, t =>
        {
            var v = t.MsiGet(r.GetValue(msiId), r.GetValue(vector));
            return $"vdev {r.GetValue(msiId)} vector {r.GetValue(vector)}: address 0x{v.Address:x} data 0x{v.Data:x}" +
                $"{(v.Masked ? " masked" : "")}{(v.Pending ? " pending" : "")}\n";
        }));
        vdev.Subcommands.Add(msi);
        return vdev;
    }

    private const uint VirtioNetDeviceId = 1;

    private static Argument<ulong> IdArgument() => new("ID")
    {
        Description = "The managed device's id (from create or list).",
        CustomParser = CliValues.ULong(0, ulong.MaxValue),
    };

    /// <summary>`status ID [set VALUE]`: STATUS_GET, or STATUS_SET then STATUS_GET (the device may keep FEATURES_OK clear).</summary>
    private static Command StatusCommand(Option<string> socket)
    {
        var status = new Command("status", "Show a managed device's status byte (STATUS_GET), or set it: status ID set VALUE (0 resets).");
        var id = IdArgument();
        var words = new Argument<string[]>("set VALUE") { Arity = new ArgumentArity(0, 2), Description = "set VALUE: write the status (decimal or 0x hex)." };
        status.Arguments.Add(id);
        status.Arguments.Add(words);
        // The words are checked while parsing, so a malformed request never connects.
        status.Validators.Add(r =>
        {
            var rest = r.GetValue(words) ?? [];
            if (rest.Length == 0)
                return;
            if (rest.Length != 2 || rest[0] != "set")
                r.AddError("expected: status ID [set VALUE]");
            else if (!CliValues.TryParseNumber(rest[1], out ulong v) || v > byte.MaxValue)
                r.AddError($"status VALUE '{rest[1]}' is not a number from 0 to 255 (the status is a byte)");
        });
        status.SetAction(r =>
        {
            ulong device = r.GetValue(id);
            var rest = r.GetValue(words) ?? [];
            byte? value = rest.Length == 2 && CliValues.TryParseNumber(rest[1], out ulong v) ? (byte)v : null;
            return Run(r.GetValue(socket)!, t =>
            {
                var text = new StringBuilder();
                if (value is { } set)
                {
                    t.StatusSet(device, set);
                    text.Append(CultureInfo.InvariantCulture, $"vdev {device}: status <- 0x{set:x2}\n");
                }
                byte s = t.StatusGet(device);
                text.Append(CultureInfo.InvariantCulture, $"vdev {device}: status 0x{s:x2} {StatusNames(s)}\n");
                return text.ToString();
            });
        });
        return status;
    }

    /// <summary>`cfg ID read OFFSET LEN`: CFG_READ, shown as hex bytes.</summary>
    private static Command CfgCommand(Option<string> socket)
    {
        var cfg = new Command("cfg", "A managed device's config space.");
        var id = IdArgument();
        cfg.Arguments.Add(id);
        var offset = new Argument<ulong>("OFFSET") { Description = "Offset (decimal or 0x hex).", CustomParser = CliValues.ULong(0, uint.MaxValue) };
        var length = new Argument<ulong>("LEN") { Description = "Bytes to read (1..4096).", CustomParser = CliValues.ULong(1, 4096) };
        var read = new Command("read", "Read config bytes (CFG_READ).");
        read.Arguments.Add(offset);
        read.Arguments.Add(length);
        read.SetAction(r => Run(r.GetValue(socket)!, t =>
        {
            ulong off = r.GetValue(offset), len = r.GetValue(length);
            var bytes = t.CfgRead(r.GetValue(id), (uint)off, (uint)len);
            return $"vdev {r.GetValue(id)} config 0x{off:x} ({len} byte(s)): {Convert.ToHexString(bytes).ToLowerInvariant()}\n";
        }));
        cfg.Subcommands.Add(read);
        return cfg;
    }

    private static string Info(TransportQueueClient t, ulong id)
    {
        var i = t.DevInfo(id);
        string type = i.VirtioDeviceId == VirtioNetDeviceId ? "net" : $"virtio device id {i.VirtioDeviceId}";
        return $"vdev {id}: {type}, {i.NumQueues} queue(s) of at most {i.MaxQueueSize}, config {i.ConfigSize} bytes, {i.MaxVectors} MSI vector(s)\n";
    }

    /// <summary>
    /// Connects as the owner driver, runs <paramref name="action"/> on its transport queue and prints the
    /// result; one line and exit 2 on any failure (the arguments were checked while parsing).
    /// </summary>
    private static int Run(string socket, Func<TransportQueueClient, string> action) => CliValues.Run("vdev", () =>
    {
        using var owner = AdminCommand.Connect(socket);
        var transport = owner.Transport
            ?? throw new FrontEndException($"the owner on {socket} has no transport queue (tvq_num is 0): it cannot manage vdevs");
        return action(transport);
    });

    private static string Hex128(UInt128 v) => $"0x{(ulong)(v >> 64):x16}{(ulong)v:x16}";

    /// <summary>The device status bits by name (VIRTIO 2.1).</summary>
    internal static string StatusNames(byte s)
    {
        if (s == 0)
            return "(reset)";
        var names = new List<string>();
        foreach (var (bit, name) in StatusBits)
            if ((s & bit) != 0)
                names.Add(name);
        int known = StatusBits.Aggregate(0, (a, b) => a | b.Bit);
        if ((s & ~known) != 0)
            names.Add($"0x{s & ~known:x2}");
        return string.Join(" ", names);
    }

    private static readonly (int Bit, string Name)[] StatusBits =
        [(1, "ACKNOWLEDGE"), (2, "DRIVER"), (4, "DRIVER_OK"), (8, "FEATURES_OK"), (64, "DEVICE_NEEDS_RESET"), (128, "FAILED")];
}
