using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Tests;

/// <summary>
/// --socket-group and --socket-mode below the daemon: reading them, and the group and mode a socket
/// file has once it listens. The tests run as root (as the project's test machine does), which may
/// give a file any group.
/// </summary>
[Trait("tier", "unit")]
public sealed class SocketAccessTests : IDisposable
{
    private const uint NoGroup = 65534;

    private readonly string _dir = Directory.CreateTempSubdirectory("vuv-access-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Theory]
    [InlineData("0660", 0x1B0u)]
    [InlineData("660", 0x1B0u)]
    [InlineData("0o600", 0x180u)]
    [InlineData("0777", 0x1FFu)]
    [InlineData("0", 0u)]
    public void An_octal_mode_is_read_with_or_without_its_leading_zero(string text, uint mode) =>
        Assert.Equal(mode, SocketAccess.ParseMode(text));

    [Theory]
    [InlineData("0888")]
    [InlineData("rw-rw----")]
    [InlineData("01777")]
    [InlineData("4755")]
    [InlineData("")]
    [InlineData("06600")]
    public void A_mode_that_is_not_octal_permission_bits_is_refused(string text)
    {
        var e = Assert.Throws<ArgumentException>(() => SocketAccess.ParseMode(text));
        Assert.Contains("0660", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void A_group_is_found_by_name_or_taken_as_a_number()
    {
        Assert.Equal(0u, SocketAccess.LookUpGroup("root"));
        Assert.Equal(NoGroup, SocketAccess.LookUpGroup("65534"));
    }

    [Fact]
    public void An_unknown_group_is_refused_with_its_name()
    {
        var e = Assert.Throws<ArgumentException>(() => SocketAccess.Parse("no-such-group-vuv", null));
        Assert.Contains("no group named 'no-such-group-vuv'", e.Message);
    }

    [Fact]
    public void A_group_alone_lets_owner_and_group_connect_and_nobody_else()
    {
        Assert.Null(SocketAccess.Parse(null, null));
        Assert.Equal(new SocketAccess(NoGroup, 0x1B0), SocketAccess.Parse("65534", null));
        Assert.Equal(new SocketAccess(null, 0x1B6), SocketAccess.Parse(null, "666"));
    }

    [Theory]
    [InlineData(0x1B0u, 0x1E8u)] // 0660 → 0750
    [InlineData(0x1B6u, 0x1EDu)] // 0666 → 0755
    [InlineData(0x180u, 0x1C0u)] // 0600 → 0700
    [InlineData(0x1A0u, 0x1E8u)] // 0640 → 0750
    public void A_socket_folder_lets_in_the_classes_that_may_use_its_sockets_but_not_write(uint socketMode, uint folderMode) =>
        Assert.Equal(folderMode, new SocketAccess(null, socketMode).DirectoryMode);

    [Fact]
    public void A_listening_socket_has_its_group_and_mode_before_anyone_can_connect()
    {
        string path = Path.Combine(_dir, "a.sock");
        using var listener = UnixSocket.Listen(path, access: new SocketAccess(NoGroup, 0x1B0));
        Assert.Equal((0u, NoGroup, 0x1B0u), SocketAccess.Of(path));
        using var client = UnixSocket.Connect(path);
    }

    [Fact]
    public void A_socket_that_takes_a_path_over_has_its_group_and_mode_too()
    {
        string path = Path.Combine(_dir, "b.sock");
        using var old = UnixSocket.Listen(path);
        using var taken = UnixSocket.ListenReplacing(path, access: new SocketAccess(NoGroup, 0x1A0));
        Assert.Equal((0u, NoGroup, 0x1A0u), SocketAccess.Of(path));
    }

    [Fact]
    public void A_folder_gets_the_group_and_a_mode_to_enter_it()
    {
        string path = Path.Combine(_dir, "sockets");
        Directory.CreateDirectory(path);
        new SocketAccess(NoGroup, 0x1B0).ApplyToDirectory(path);
        Assert.Equal((0u, NoGroup, 0x1E8u), SocketAccess.Of(path));
    }

    [Fact]
    public void Without_access_a_socket_keeps_what_the_umask_gives()
    {
        string path = Path.Combine(_dir, "c.sock");
        using var listener = UnixSocket.Listen(path);
        Assert.Equal(0u, SocketAccess.Of(path)!.Value.Group);
    }
}
