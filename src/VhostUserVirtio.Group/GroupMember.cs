using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Net;

namespace VhostUserVirtio.Group;

/// <summary>
/// One device of a group: the owner (id 0, the PF) or an SR-IOV member (id = VF number, from 1).
/// The member id is what admin commands name in group_member_id.
/// </summary>
public sealed class GroupMember
{
    internal GroupMember(int id, NetDevice device, VhostUserEndpoint endpoint, Legacy.LegacyNetInterface? legacy)
    {
        Id = id;
        Device = device;
        Endpoint = endpoint;
        Legacy = legacy;
    }

    /// <summary>The member's legacy register file (VFs only), driven through the owner's legacy admin commands.</summary>
    public Legacy.LegacyNetInterface? Legacy { get; }

    public int Id { get; }
    public bool IsOwner => Id == 0;
    public string Name => Device.Name;
    /// <summary>The member's virtio-net device (for the owner: the net part of its <see cref="OwnerDevice"/>).</summary>
    public NetDevice Device { get; }
    /// <summary>The owner device with its admin queue, when this is the owner.</summary>
    public OwnerDevice? Owner => Endpoint.Backend.Device as OwnerDevice;
    public VhostUserEndpoint Endpoint { get; }
    public string SocketPath => Endpoint.SocketPath;

    /// <summary>Socket file name of a member in the group's socket directory.</summary>
    public static string SocketFileName(int id) => id == 0 ? "pf.sock" : $"vf{id}.sock";

    public static string DeviceName(int id) => id == 0 ? "pf" : $"vf{id}";
}
