using System.Globalization;

namespace VhostUserVirtio.Interop;

/// <summary>
/// Who may connect to the sockets a back end listens on: a group and a permission mode given to each
/// socket file after bind and before listen, so no connection is ever accepted with the file's
/// default root:root 0755 (connect needs write permission on the file). Used so that a front end
/// running as another user, such as libvirt's QEMU, can connect.
/// </summary>
/// <param name="Group">Group id given to each socket, or null to keep the creator's.</param>
/// <param name="Mode">Permission bits (at most 0777), or null to keep what the umask gave.</param>
public sealed record SocketAccess(uint? Group, uint? Mode)
{
    /// <summary>The mode when only a group is given: owner and group may connect, nobody else.</summary>
    public const uint GroupDefaultMode = 0x1B0; // 0660

    /// <summary>
    /// Reads a group (name or numeric id) and an octal mode (0660, 660), either possibly absent; null
    /// when both are. Throws ArgumentException with one line saying what is wrong.
    /// </summary>
    public static SocketAccess? Parse(string? group, string? mode)
    {
        if (group == null && mode == null)
            return null;
        uint? gid = group == null ? null : LookUpGroup(group);
        uint? bits = mode == null ? (gid != null ? GroupDefaultMode : null) : ParseMode(mode);
        return new SocketAccess(gid, bits);
    }

    /// <summary>A group name (through the system's group database, so NSS sources count) or a numeric id.</summary>
    public static uint LookUpGroup(string group)
    {
        if (string.IsNullOrWhiteSpace(group))
            throw new ArgumentException("a group name or numeric group id is needed");
        if (uint.TryParse(group, NumberStyles.None, CultureInfo.InvariantCulture, out uint id))
            return id;
        if (group.Contains('\0', StringComparison.Ordinal))
            throw new ArgumentException($"no group named '{group}'");
        unsafe
        {
            nint entry = Libc.Getgrnam(group);
            if (entry == 0)
                throw new ArgumentException($"no group named '{group}' (getent group lists them)");
            return *(uint*)(entry + 2 * nint.Size);
        }
    }

    /// <summary>Octal permission bits 0 to 0777, with or without a leading 0 (no setuid, setgid or sticky bits).</summary>
    public static uint ParseMode(string mode)
    {
        string digits = mode.Trim();
        if (digits.StartsWith("0o", StringComparison.OrdinalIgnoreCase))
            digits = digits[2..];
        uint value = 0;
        bool valid = digits.Length is > 0 and <= 4;
        foreach (char c in digits)
        {
            if (c is < '0' or > '7')
                valid = false;
            else
                value = value * 8 + (uint)(c - '0');
        }
        if (!valid || value > 0x1FF)
            throw new ArgumentException($"'{mode}' is not octal permission bits from 0 to 0777, like 0660");
        return value;
    }

    /// <summary>
    /// The mode of a socket folder the back end creates itself: the owner has all rights; a class that
    /// may use the sockets may enter and list the folder but not add or remove files (0660 gives 0750).
    /// </summary>
    public uint DirectoryMode
    {
        get
        {
            uint mode = Mode ?? GroupDefaultMode;
            uint result = 0x1C0; // 0700
            if ((mode & 0x38) != 0)
                result |= 0x28; // group r-x
            if ((mode & 0x7) != 0)
                result |= 0x5; // other r-x
            return result;
        }
    }

    /// <summary>Gives the socket file at <paramref name="path"/> this group and mode. Throws NativeException (EPERM: not allowed to give that group).</summary>
    public void ApplyToSocket(string path)
    {
        if (Group is { } gid)
            NativeException.Check(Libc.Lchown(path, uint.MaxValue, gid), $"chown({path}, group {gid})");
        if (Mode is { } mode)
            NativeException.Check(Libc.Chmod(path, mode), $"chmod({path}, {Convert.ToString(mode, 8)})");
    }

    /// <summary>Gives a folder this back end created the group and <see cref="DirectoryMode"/> (through its descriptor, not following a symlink).</summary>
    public void ApplyToDirectory(string path)
    {
        int fd = NativeException.Check(Libc.Open(path, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_NOFOLLOW | Libc.O_CLOEXEC), $"open({path})");
        using var dir = new FileDescriptor(fd);
        if (Group is { } gid)
            NativeException.Check(Libc.Fchown(fd, uint.MaxValue, gid), $"chown({path}, group {gid})");
        NativeException.Check(Libc.Fchmod(fd, DirectoryMode), $"chmod({path}, {Convert.ToString(DirectoryMode, 8)})");
    }

    /// <summary>The owner, group and permission bits of the file at <paramref name="path"/> (not following a symlink), or null if there is none.</summary>
    public static unsafe (uint Owner, uint Group, uint Mode)? Of(string path)
    {
        Libc.StatBuffer st;
        if (Libc.Lstat(path, &st) != 0)
            return null;
        return (st.Uid, st.Gid, st.Mode & 0xFFF);
    }

    /// <summary>For logs: "group 64055, mode 0660".</summary>
    public override string ToString() =>
        string.Join(", ", new[] { Group is { } g ? $"group {g}" : null, Mode is { } m ? "mode 0" + Convert.ToString(m, 8) : null }.Where(s => s != null));
}
