using System.Buffers.Binary;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.FrontEnd.Owner;

/// <summary>The owner information block the PF publishes in its config space (<see cref="OwnerInformation"/>).</summary>
public sealed record OwnerInfo(ushort AdminQueueIndex, ushort AdminQueueNum, ushort TvqIndex, ushort TvqNum,
    ushort TotalVfs, ushort NumVfs, ushort MaxVdevs, ushort BindingVersion)
{
    public static OwnerInfo Read(ReadOnlySpan<byte> b) => new(
        Field(b, OwnerInformation.AdminQueueIndex), Field(b, OwnerInformation.AdminQueueNum),
        Field(b, OwnerInformation.TvqIndex), Field(b, OwnerInformation.TvqNum),
        Field(b, OwnerInformation.TotalVfs), Field(b, OwnerInformation.NumVfs),
        Field(b, OwnerInformation.MaxVdevs), Field(b, OwnerInformation.BindingVersion));

    private static ushort Field(ReadOnlySpan<byte> block, int offset) => BinaryPrimitives.ReadUInt16LittleEndian(block[offset..]);
}

/// <summary>
/// The owner (PF) driver, as a hypervisor's PF driver would be: connects to pf.sock, reads the owner
/// information block, brings the PF up with every ring including the admin queue and the transport
/// queue (when it has one), and issues admin commands through <see cref="Admin"/> and transport-queue
/// commands through <see cref="Transport"/>.
/// </summary>
public sealed class OwnerDriver : IDisposable
{
    private OwnerDriver(FrontEndSession session, OwnerInfo info)
    {
        Session = session;
        Info = info;
        Admin = new AdminQueueClient(session.Ram, session.Queues[info.AdminQueueIndex]);
        if (info.TvqNum > 0)
            Transport = new TransportQueueClient(session.Ram, session.Queues[info.TvqIndex]);
    }

    public FrontEndSession Session { get; }
    public OwnerInfo Info { get; }
    public AdminQueueClient Admin { get; }
    /// <summary>The transport virtqueue (the first one, when the owner has several); null when the owner has none.</summary>
    public TransportQueueClient? Transport { get; }

    /// <summary>Rings the owner driver sets up: through the admin queue(s) and the transport queue(s), whichever ends later.</summary>
    public static int QueueCountFor(OwnerInfo info) =>
        Math.Max(info.AdminQueueIndex + info.AdminQueueNum, info.TvqNum > 0 ? info.TvqIndex + info.TvqNum : 0);

    /// <param name="connectTimeout">How long to keep trying while the socket is missing or refuses (default 10 s).</param>
    public static OwnerDriver Connect(string pfSocket, int adminQueueSize = 64, TimeSpan? connectTimeout = null)
    {
        var timeout = connectTimeout ?? TimeSpan.FromSeconds(10);
        // A first connection reads where the admin queue is; the session then sets up that many rings.
        OwnerInfo info;
        using (var probe = ConnectProbe(pfSocket, timeout))
        {
            if (!VirtioFeature.Has(FirstReply(probe, pfSocket), VirtioFeature.AdminVq))
                throw new FrontEndException($"{pfSocket} does not offer VIRTIO_F_ADMIN_VQ: not a group owner");
            probe.SetProtocolFeatures(probe.GetProtocolFeatures());
            var block = probe.GetConfig(OwnerInformation.Offset, OwnerInformation.Size)
                ?? throw new FrontEndException("the owner refused to read its information block");
            info = OwnerInfo.Read(block);
        }
        var session = FrontEndSession.Start(pfSocket, new FrontEndSession.Options
        {
            QueueCount = QueueCountFor(info),
            QueueSize = adminQueueSize,
            ConnectTimeout = timeout,
        });
        return new OwnerDriver(session, info);
    }

    private static VhostUserFrontEnd ConnectProbe(string pfSocket, TimeSpan timeout)
    {
        try
        {
            return VhostUserFrontEnd.Connect(pfSocket, timeout);
        }
        catch (Interop.NativeException e) when (e.IsNoListener)
        {
            throw new FrontEndException($"no daemon serves {pfSocket} ({e.Message})");
        }
    }

    /// <summary>
    /// GET_FEATURES, the first request. An owner already driven by another front end accepts the
    /// connection, waits a moment for the other to go, then closes it unanswered: say so, rather than
    /// "connection reset".
    /// </summary>
    private static ulong FirstReply(VhostUserFrontEnd probe, string pfSocket)
    {
        try
        {
            return probe.GetFeatures();
        }
        catch (Exception e) when (e is BackEndClosedException or Interop.NativeException { IsPeerGone: true })
        {
            throw new FrontEndException($"{pfSocket} is in use by another front end: its owner serves one at a time and closed this connection unanswered");
        }
    }

    /// <summary>
    /// What a PF driver does when it activates the admin queue: LIST_QUERY the SR-IOV group, then
    /// LIST_USE everything it supports. Returns the opcodes now in use (the LIST_QUERY bitmap).
    /// </summary>
    public byte[] UseAllCommands()
    {
        var query = Admin.Execute((ushort)AdminOpcode.ListQuery, SrIovGroup, 0, default, 64);
        if (!query.Ok)
            throw new FrontEndException($"LIST_QUERY failed: status {query.Status}, qualifier {query.Qualifier}");
        var use = Admin.Execute((ushort)AdminOpcode.ListUse, SrIovGroup, 0, query.Result, 0);
        if (!use.Ok)
            throw new FrontEndException($"LIST_USE failed: status {use.Status}, qualifier {use.Qualifier}");
        return query.Result;
    }

    private const ushort SrIovGroup = (ushort)AdminGroupType.SrIov;

    public void Dispose() => Session.Dispose();
}
