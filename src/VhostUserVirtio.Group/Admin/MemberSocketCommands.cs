using System.Text;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using static VhostUserVirtio.Protocol.MemberSocketData;

namespace VhostUserVirtio.Group.Admin;

/// <summary>
/// MEMBER_SOCKET (0x43, project block; docs/owner-binding.md "Back-end handover"): the vhost-user socket
/// a VF is served on, as the owner sees it, for handing a member over to another back end without its
/// front end noticing more than a reconnect. Data {u8 operation; u8 reserved[7]; path (TAKE_OVER)}.
/// QUERY → {u8 flags (bit 0 listening, bit 1 front end connected, bit 2 stopped); u8 reserved[7]; path}.
/// TAKE_OVER makes the member listen on the given path, replacing whoever listens there atomically;
/// RELEASE disconnects the member's front end and closes its socket. Both only while the owner has the
/// member stopped (EBUSY otherwise), so no ring runs across the move; TAKE_OVER also only while no
/// front end is connected. A refused command changes nothing.
/// </summary>
internal sealed class MemberSocketCommands(IAdminGroupState group, ILogger logger)
{
    public AdminOutcome Execute(ulong member, ReadOnlySpan<byte> data, Span<byte> result, int room)
    {
        if (data.Length < 8 || data[1..8].ContainsAnyExcept((byte)0) || data[0] > Release || (data[0] != TakeOver && data.Length > 8))
            return AdminOutcome.Invalid(AdminQualifier.InvalidField);
        if (group.MemberOf(member) is not { } m)
            return AdminOutcome.Invalid(AdminQualifier.InvalidMember);
        var endpoint = m.Endpoint;
        bool stopped = endpoint.Backend.MemberStopped;
        switch (data[0])
        {
            case Query:
            {
                var path = Encoding.UTF8.GetBytes(endpoint.SocketPath);
                if (room < 8 + path.Length)
                    return new AdminOutcome(AdminStatus.Enomem, AdminQualifier.InvalidField);
                result[..8].Clear();
                result[0] = (byte)((endpoint.Listening ? Listening : 0) | (endpoint.IsConnected ? Connected : 0) | (stopped ? Stopped : 0));
                path.CopyTo(result[8..]);
                return AdminOutcome.Ok(8 + path.Length);
            }
            case TakeOver:
            {
                if (!stopped || endpoint.IsConnected)
                    return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
                if (ReadPath(data[8..]) is not { } path)
                    return AdminOutcome.Invalid(AdminQualifier.InvalidField);
                try
                {
                    endpoint.TakeOver(path);
                }
                catch (Exception e) when (e is ArgumentException or NativeException or IOException or InvalidOperationException)
                {
                    logger.LogWarning("admin: {Device} cannot take over {Path}: {Error}", m.Device.Name, path, e.Message);
                    return AdminOutcome.Invalid(AdminQualifier.InvalidField);
                }
                logger.LogInformation("admin: {Device} takes over {Path}", m.Device.Name, path);
                return AdminOutcome.Ok();
            }
            default:
                if (!stopped)
                    return new AdminOutcome(AdminStatus.Ebusy, AdminQualifier.InvalidCommand);
                try
                {
                    endpoint.Release("handed over to another back end by the owner");
                }
                catch (InvalidOperationException e)
                {
                    logger.LogWarning("admin: {Device} cannot release its socket: {Error}", m.Device.Name, e.Message);
                    return AdminOutcome.Invalid(AdminQualifier.InvalidField);
                }
                return AdminOutcome.Ok();
        }
    }

    /// <summary>An absolute path of valid UTF-8 without NUL that fits a socket address, or null.</summary>
    private static string? ReadPath(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty || bytes.Length >= 108 || bytes.Contains((byte)0))
            return null;
        string path;
        try
        {
            path = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (ArgumentException)
        {
            return null;
        }
        return Path.IsPathFullyQualified(path) ? path : null;
    }
}
