using System.Buffers;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Group.Admin;

namespace VhostUserVirtio.Group.Migration;

/// <summary>
/// A VF's state for its own front end's state transfer (vhost-user DEVICE_STATE): the same device
/// parts stream the owner's DEV_PARTS_GET returns, so a member moves between back ends, or between
/// processes of this daemon, in one format.
/// </summary>
internal sealed class MemberStateStore(GroupMember member, MsixPool pool) : IDeviceStateStore
{
    public byte[]? Save(out string? error)
    {
        error = NetMemberMigration.CaptureParts(member, pool, out var parts)?.Detail;
        return parts;
    }

    public string? Load(ReadOnlySpan<byte> state) =>
        NetMemberMigration.Restore(new ReadOnlySequence<byte>(state.ToArray()), member.Device, member.Endpoint.Backend.Queues,
            new MemberVectors(pool, member.Id - 1), out _)?.Detail;
}
