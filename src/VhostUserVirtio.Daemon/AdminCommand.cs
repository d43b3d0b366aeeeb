using System.CommandLine;
using System.Text;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// `vhost-virtio admin …`: the owner driver as a command-line tool. It connects to the owner's socket
/// (pf.sock) the way a hypervisor's PF driver would, issues admin commands and prints the results.
/// </summary>
internal static class AdminCommand
{
    public static Command Create()
    {
        var socket = new Option<string>("--socket")
        {
            Description = "The owner's socket.",
            HelpName = "PATH",
            DefaultValueFactory = _ => "./sockets/pf.sock",
        };
        var admin = new Command("admin", "Act as the owner (PF) driver: issue admin commands over the owner's admin queue.");
        admin.Options.Add(socket);

        var list = new Command("list", "Show the owner information block and the admin commands each group type supports (LIST_QUERY).");
        list.SetAction(r => Run(() => List(r.GetValue(socket)!)));
        admin.Subcommands.Add(list);

        var count = new Argument<int>("N") { Description = "VFs to enable (0 disables them).", CustomParser = CliValues.Int(0, ushort.MaxValue) };
        var set = new Command("set", "SR-IOV VF Enable: write num_vfs (only 0 → N or N → 0, as on PCI).");
        set.Arguments.Add(count);
        set.SetAction(r => Run(() => SetVfs(r.GetValue(socket)!, r.GetValue(count))));
        var vfs = new Command("vfs", "SR-IOV members.");
        vfs.Subcommands.Add(set);
        admin.Subcommands.Add(vfs);
        admin.Subcommands.Add(MemberCommand(socket));
        var attrs = new Command("msix", "The owner's MSI-X vector pool for its VFs (MEMBER_RESOURCE_ATTRS).");
        attrs.SetAction(r => Run(() => MsixPool(r.GetValue(socket)!)));
        admin.Subcommands.Add(attrs);
        admin.Subcommands.Add(LegacyCommand(socket));
        return admin;
    }

    private static int Run(Func<string> action) => CliValues.Run("admin", action);

    private static string List(string socket)
    {
        using var owner = OwnerDriver.Connect(socket, connectTimeout: TimeSpan.FromSeconds(2));
        var text = new StringBuilder();
        var i = owner.Info;
        text.AppendLine($"owner {socket}: admin queue {i.AdminQueueIndex} (x{i.AdminQueueNum}), VFs {i.NumVfs} of {i.TotalVfs}, binding version {i.BindingVersion}");
        foreach (var group in new[] { AdminGroupType.SrIov, AdminGroupType.Self })
        {
            var r = owner.Admin.Execute((ushort)AdminOpcode.ListQuery, (ushort)group, 0, default, 16);
            if (!r.Ok)
            {
                text.AppendLine($"  {group}: {r.Describe()}");
                continue;
            }
            AdminOpcodeSet.TryRead(r.Result, out var supported);
            var names = Enumerable.Range(0, AdminOpcodeSet.Capacity).Where(n => supported.Contains((ushort)n))
                .Select(n => Enum.IsDefined(typeof(AdminOpcode), (ushort)n) ? $"0x{n:x} {(AdminOpcode)n}" : $"0x{n:x}");
            text.AppendLine($"  {group}: {string.Join(", ", names)}");
        }
        return text.ToString();
    }

    /// <summary>`vf ID set-mac MAC | link up|down | trust on|off`: NET_MEMBER_CTRL on one member (0 = the owner).</summary>
    private static Command MemberCommand(Option<string> socket)
    {
        var id = new Argument<int>("ID") { Description = "Member id: the VF number (0 = the owner itself).", CustomParser = CliValues.Int(0, ushort.MaxValue) };
        var vf = new Command("vf", "Control one member through NET_MEMBER_CTRL.");
        vf.Arguments.Add(id);

        var mac = new Argument<Devices.Switch.Mac>("MAC") { Description = "Six hex octets, such as 52:54:00:12:34:56.", CustomParser = CliValues.Mac };
        var setMac = new Command("set-mac", "Set the member's MAC (what its config space reports and its receive filter uses).");
        setMac.Arguments.Add(mac);
        setMac.SetAction(r => Run(() =>
        {
            var bytes = new byte[6];
            r.GetValue(mac).Write(bytes);
            return MemberCtrl(r.GetValue(socket)!, r.GetValue(id), Devices.Net.VirtioNet.CtrlMac, Devices.Net.VirtioNet.CtrlMacAddrSet, bytes,
                "the switch filters and spoof-checks on the new MAC, but the guest keeps the MAC its hypervisor gave it " +
                "(QEMU: -device virtio-net-pci,mac=...), so its traffic is now dropped or misdirected until both agree");
        }));
        vf.Subcommands.Add(setMac);

        var state = new Argument<string>("up|down");
        state.AcceptOnlyFromAmong("up", "down");
        var link = new Command("link", "Set the member's link state.");
        link.Arguments.Add(state);
        link.SetAction(r => Run(() => MemberCtrl(r.GetValue(socket)!, r.GetValue(id), NetMemberControl.LinkClass, 0,
            [(byte)(r.GetValue(state) == "up" ? 1 : 0)],
            r.GetValue(state) == "up"
                ? "the switch forwards its traffic again, but the guest's carrier is whatever its hypervisor says (QEMU: QMP set_link)"
                : "the switch now drops its traffic, but the guest still sees its carrier up (QEMU: QMP set_link ... off takes it down)")));
        vf.Subcommands.Add(link);

        var trusted = new Argument<string>("on|off");
        trusted.AcceptOnlyFromAmong("on", "off");
        var trust = new Command("trust", "Whether the member may send from MACs other than its own (no spoof check) and its own driver may change its MAC and receive modes.");
        trust.Arguments.Add(trusted);
        trust.SetAction(r => Run(() => MemberCtrl(r.GetValue(socket)!, r.GetValue(id), NetMemberControl.TrustClass, 0,
            [(byte)(r.GetValue(trusted) == "on" ? 1 : 0)])));
        vf.Subcommands.Add(trust);

        var mode = new Argument<string>("MODE") { Description = "promisc, allmulti, alluni, nomulti, nouni or nobcast." };
        mode.AcceptOnlyFromAmong(RxModes);
        var modeState = new Argument<string>("on|off");
        modeState.AcceptOnlyFromAmong("on", "off");
        var rx = new Command("rx", "Set one of the member's receive modes (the control queue's RX class).");
        rx.Arguments.Add(mode);
        rx.Arguments.Add(modeState);
        rx.SetAction(r => Run(() => MemberCtrl(r.GetValue(socket)!, r.GetValue(id), Devices.Net.VirtioNet.CtrlRx,
            (byte)Array.IndexOf(RxModes, r.GetValue(mode)), [(byte)(r.GetValue(modeState) == "on" ? 1 : 0)])));
        vf.Subcommands.Add(rx);

        // 2048: the most an MSI-X table holds (PCI); the owner's pool may allow fewer.
        var vectors = new Argument<int>("N") { Description = "MSI-X vectors for the VF (its driver must not be attached).", CustomParser = CliValues.Int(0, 2048) };
        var msixSet = new Command("set", "Assign MSI-X vectors to the VF (MEMBER_RESOURCE assign).");
        msixSet.Arguments.Add(vectors);
        msixSet.SetAction(r => Run(() => Msix(r.GetValue(socket)!, r.GetValue(id), r.GetValue(vectors))));
        var msixShow = new Command("show", "The VF's MSI-X vectors (MEMBER_RESOURCE query).");
        msixShow.SetAction(r => Run(() => Msix(r.GetValue(socket)!, r.GetValue(id), null)));
        var msix = new Command("msix", "MSI-X vectors of the VF.");
        msix.Subcommands.Add(msixSet);
        msix.Subcommands.Add(msixShow);
        vf.Subcommands.Add(msix);
        return vf;
    }

    /// <summary>
    /// `legacy read|write --vf ID (--common OFF | --device OFF) --len N [VALUE]` and `legacy notify-info
    /// --vf ID`: one legacy register access, as virtio-vfio-pci issues it on a guest's behalf.
    /// </summary>
    private static Command LegacyCommand(Option<string> socket)
    {
        var vf = new Option<int>("--vf") { Description = "The VF (member id).", Required = true, CustomParser = CliValues.Int(0, ushort.MaxValue) };
        // Offsets up to 255 (the admin command's field); the device refuses those past its registers.
        var common = new Option<int?>("--common") { Description = "Offset in the legacy common header (0..23).", HelpName = "OFFSET", CustomParser = r => CliValues.Int(0, 255)(r) };
        var device = new Option<int?>("--device") { Description = "Offset in the legacy device config (virtio-net: 0..11).", HelpName = "OFFSET", CustomParser = r => CliValues.Int(0, 255)(r) };
        var length = new Option<int>("--len") { Description = "Access width in bytes (1..8).", DefaultValueFactory = _ => 4, CustomParser = CliValues.Int(1, 8) };
        var legacy = new Command("legacy", "Access a VF's legacy (transitional) registers through the owner (LEGACY_* admin commands).");

        void OneRegister(System.CommandLine.Parsing.CommandResult r)
        {
            if ((r.GetValue(common) == null) == (r.GetValue(device) == null))
                r.AddError("give exactly one of --common OFFSET or --device OFFSET");
        }
        var read = new Command("read", "Read a legacy register (LEGACY_COMMON_CFG_READ / LEGACY_DEV_CFG_READ).");
        foreach (var o in new Option[] { vf, common, device, length })
            read.Options.Add(o);
        read.Validators.Add(OneRegister);
        read.SetAction(r => Run(() => Legacy(r.GetValue(socket)!, r.GetValue(vf), r.GetValue(common), r.GetValue(device), r.GetValue(length), null)));
        legacy.Subcommands.Add(read);

        var value = new Argument<ulong>("VALUE") { Description = "Little-endian value to write (decimal or 0x hex).", CustomParser = CliValues.ULong(0, ulong.MaxValue) };
        var write = new Command("write", "Write a legacy register (LEGACY_COMMON_CFG_WRITE / LEGACY_DEV_CFG_WRITE).");
        foreach (var o in new Option[] { vf, common, device, length })
            write.Options.Add(o);
        write.Arguments.Add(value);
        write.Validators.Add(OneRegister);
        write.Validators.Add(r =>
        {
            int len = r.GetValue(length);
            if (len is >= 1 and < 8 && r.GetValue(value) >> (8 * len) != 0)
                r.AddError($"VALUE 0x{r.GetValue(value):x} does not fit in --len {len} byte(s)");
        });
        write.SetAction(r => Run(() => Legacy(r.GetValue(socket)!, r.GetValue(vf), r.GetValue(common), r.GetValue(device), r.GetValue(length), r.GetValue(value))));
        legacy.Subcommands.Add(write);

        var info = new Command("notify-info", "Where the VF's legacy queue-notify doorbell is (LEGACY_NOTIFY_INFO).");
        info.Options.Add(vf);
        info.SetAction(r => Run(() =>
        {
            using var owner = Connect(r.GetValue(socket)!);
            var entries = new LegacyAccess(owner.Admin, (ulong)r.GetValue(vf)).NotifyInfo();
            return string.Concat(entries.Select(e =>
                $"VF {r.GetValue(vf)}: {(e.Flags == 2 ? "member" : e.Flags == 1 ? "owner" : $"flags {e.Flags}")} BAR{e.Bar} offset 0x{e.Offset:x}\n"));
        }));
        legacy.Subcommands.Add(info);
        return legacy;
    }

    /// <summary>One legacy access; the parser has checked the offsets, the width and that <paramref name="value"/> fits it.</summary>
    private static string Legacy(string socket, int vf, int? common, int? device, int length, ulong? value)
    {
        int offset = common ?? device!.Value;
        using var owner = Connect(socket);
        var registers = new LegacyAccess(owner.Admin, (ulong)vf);
        string where = common != null ? $"common {offset}" : $"device {offset}";
        if (value == null)
        {
            var r = common != null ? registers.ReadCommonRaw(offset, length) : registers.ReadDeviceRaw(offset, length);
            if (!r.Ok)
                throw new FrontEndException($"VF {vf}: legacy read of {length} byte(s) at {where} failed: {r.Describe()}");
            var bytes = r.Result.AsSpan(0, Math.Min(length, r.Result.Length));
            ulong number = 0;
            for (int i = bytes.Length - 1; i >= 0; i--)
                number = number << 8 | bytes[i];
            return $"VF {vf} {where} ({length} byte(s)): 0x{number.ToString($"x{2 * length}")} ({number}) bytes {Convert.ToHexString(bytes).ToLowerInvariant()}\n";
        }
        ulong parsed = value.Value;
        var data = BitConverter.GetBytes(parsed)[..length];
        var w = common != null ? registers.WriteCommonRaw(offset, data) : registers.WriteDeviceRaw(offset, data);
        if (!w.Ok)
            throw new FrontEndException($"VF {vf}: legacy write of {length} byte(s) at {where} failed: {w.Describe()}");
        return $"VF {vf} {where} ({length} byte(s)) <- 0x{parsed:x}\n";
    }

    internal static OwnerDriver Connect(string socket)
    {
        var owner = OwnerDriver.Connect(socket, connectTimeout: TimeSpan.FromSeconds(2));
        try
        {
            owner.UseAllCommands();
            return owner;
        }
        catch
        {
            owner.Dispose();
            throw;
        }
    }

    /// <param name="unseen">
    /// What it means when the member's driver does not read config space through this device (the
    /// result of NET_MEMBER_CTRL says so): printed as a warning, since the change took effect in the
    /// switch but not in the guest. Null for changes that live in the device alone.
    /// </param>
    private static string MemberCtrl(string socket, int member, byte cls, byte command, byte[] data, string? unseen = null)
    {
        using var owner = Connect(socket);
        var payload = new byte[NetMemberControl.HeaderSize + data.Length];
        payload[0] = cls;
        payload[1] = command;
        data.CopyTo(payload, NetMemberControl.HeaderSize);
        var r = owner.Admin.Execute((ushort)AdminOpcode.NetMemberCtrl, (ushort)AdminGroupType.SrIov, (ulong)member, payload, 8);
        if (!r.Ok)
            throw new FrontEndException($"NET_MEMBER_CTRL on member {member} failed: {r.Describe()}");
        if (unseen != null && ReachWarning(member, r.Result, unseen) is { } warning)
            Console.Error.WriteLine("vhost-virtio admin: warning: " + warning);
        return $"member {member}: done\n";
    }

    /// <summary>Why the change may not reach member <paramref name="member"/>'s driver, from NET_MEMBER_CTRL's result; null when it does.</summary>
    internal static string? ReachWarning(int member, ReadOnlySpan<byte> result, string unseen)
    {
        if (result.Length < 8)
            return null; // a device that does not report reach: nothing to say either way
        var reach = (NetMemberReach)BitConverter.ToUInt64(result);
        if ((reach & NetMemberReach.ConfigVisible) != 0)
            return null;
        string who = member == 0 ? "the owner" : $"VF {member}";
        return (reach & NetMemberReach.DriverAttached) != 0
            ? $"{who}'s front end did not negotiate VHOST_USER_PROTOCOL_F_CONFIG (QEMU's vhost-user-net never does), so its driver does not see this change: {unseen}. See qemu-configs/README.md."
            : $"{who} has no front end connected; a front end that reads config space (VHOST_USER_PROTOCOL_F_CONFIG) will see this change, a QEMU guest will not: {unseen}. See qemu-configs/README.md.";
    }

    /// <summary>The RX class commands in command-number order (VIRTIO 5.1.6.5.1).</summary>
    private static readonly string[] RxModes = ["promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast"];

    /// <summary>MEMBER_RESOURCE: assign <paramref name="vectors"/> MSI-X vectors, or query them (null).</summary>
    private static string Msix(string socket, int member, int? vectors)
    {
        using var owner = Connect(socket);
        var data = new byte[16];
        data[0] = vectors == null ? MemberResourceData.Query : MemberResourceData.Assign;
        BitConverter.GetBytes((ulong)Math.Max(0, vectors ?? 0)).CopyTo(data, 8);
        var r = owner.Admin.Execute((ushort)AdminOpcode.MemberResource, (ushort)AdminGroupType.SrIov, (ulong)member, data, 16);
        if (!r.Ok)
            throw new FrontEndException($"MEMBER_RESOURCE on VF {member} failed: {r.Describe()}");
        return $"VF {member}: {BitConverter.ToUInt64(r.Result)} MSI-X vectors\n";
    }

    private static string MsixPool(string socket)
    {
        using var owner = Connect(socket);
        var r = owner.Admin.Execute((ushort)AdminOpcode.MemberResourceAttrs, (ushort)AdminGroupType.SrIov, 0, default, 128);
        if (!r.Ok)
            throw new FrontEndException($"MEMBER_RESOURCE_ATTRS failed: {r.Describe()}");
        var b = r.Result.AsSpan();
        return $"MSI-X vectors for VFs: {BitConverter.ToUInt32(b[8..])} in the pool, {BitConverter.ToUInt32(b[12..])} assigned, at most {BitConverter.ToUInt16(b[16..])} per VF\n";
    }

    private static string SetVfs(string socket, int count)
    {
        using var owner = OwnerDriver.Connect(socket, connectTimeout: TimeSpan.FromSeconds(2));
        try
        {
            owner.Session.Connection.SetConfig(OwnerInformation.Offset + OwnerInformation.NumVfs, BitConverter.GetBytes((ushort)count));
        }
        catch (FrontEndException)
        {
            throw new FrontEndException($"the owner refused num_vfs {count} (it has {owner.Info.NumVfs} of {owner.Info.TotalVfs}; only 0 -> N and N -> 0 are allowed)");
        }
        return $"num_vfs set to {count}\n";
    }
}
