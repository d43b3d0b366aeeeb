using VhostUserVirtio.Protocol;
using static VhostUserVirtio.FrontEnd.Owner.TransportFrames;

namespace VhostUserVirtio.FrontEnd.Owner;

/// <summary>
/// The owner driver's side of a transport virtqueue: frames a command (header, data; ack,
/// command-in-data), posts it split over descriptors, waits for its reply and decodes it. The typed
/// helpers throw <see cref="TransportCommandException"/> when the device refuses;
/// <see cref="Execute"/> and the raw <see cref="Post(ReadOnlySpan{byte}, int, int[], int[])"/> send
/// anything, for tests of hostile input.
/// </summary>
public sealed class TransportQueueClient
{
    /// <summary>The owner itself: DEV_LIST and DEV_CREATE go to it.</summary>
    public const ulong OwnerId = 0;

    private readonly DriverQueue _queue;
    private readonly CommandChains _chains;

    public TransportQueueClient(GuestRam ram, DriverQueue queue)
    {
        _queue = queue;
        _chains = new CommandChains(ram, queue, "transport queue");
    }

    public DriverQueue Queue => _queue;

    /// <summary>
    /// Sends one command and waits for its reply. The writable part has room for the ack and
    /// <paramref name="resultCapacity"/> bytes of command-in-data, exactly (an error needs 4).
    /// </summary>
    public TransportReply Execute(ulong deviceId, ushort cls, ushort command, ReadOnlySpan<byte> data = default, int resultCapacity = 64)
    {
        ushort head = Post(deviceId, cls, command, data, resultCapacity);
        _queue.Notify();
        return Complete(head);
    }

    public TransportReply Execute(ulong deviceId, TransportOpcode op, ReadOnlySpan<byte> data = default, int resultCapacity = 64) =>
        Execute(deviceId, Class(op), Command(op), data, resultCapacity);

    /// <summary>
    /// Posts one command without kicking: header and data in one descriptor each, ack and
    /// command-in-data likewise. Returns the head; kick, then <see cref="Complete"/> in posting order.
    /// </summary>
    public ushort Post(ulong deviceId, ushort cls, ushort command, ReadOnlySpan<byte> data, int resultCapacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(resultCapacity);
        var readable = new byte[HeaderSize + data.Length];
        Header(deviceId, cls, command).CopyTo(readable, 0);
        data.CopyTo(readable.AsSpan(HeaderSize));
        return Post(readable, AckSize + resultCapacity,
            readableSplit: data.IsEmpty ? [HeaderSize] : [HeaderSize, data.Length],
            writableSplit: resultCapacity == 0 ? [AckSize] : [AckSize, resultCapacity]);
    }

    /// <summary>
    /// Posts a frame whose readable bytes are <paramref name="readable"/> split into descriptors of
    /// the given sizes, followed by <paramref name="writableLength"/> writable bytes split likewise.
    /// </summary>
    public ushort Post(ReadOnlySpan<byte> readable, int writableLength, int[] readableSplit, int[] writableSplit) =>
        _chains.Post(readable, writableLength, readableSplit, writableSplit);

    /// <summary>Waits for the next used element, which must be <paramref name="head"/>, and decodes it.</summary>
    public TransportReply Complete(ushort head, int timeoutMs = 10_000)
    {
        var (written, used) = _chains.Complete(head, timeoutMs);
        return ParseReply(written, used);
    }

    /// <summary>Runs a typed command: room for at least an error's status and qualifier; throws when refused.</summary>
    private byte[] Run(ulong deviceId, TransportOpcode op, ReadOnlySpan<byte> data = default, int resultSize = 0)
    {
        var reply = Execute(deviceId, op, data, Math.Max(resultSize, ErrorSize));
        if (!reply.Ok)
            throw new TransportCommandException(op, deviceId, reply);
        return reply.Result;
    }

    /// <summary>DEV_LIST: ids of the managed devices; room for <paramref name="maxDevices"/> of them.</summary>
    public uint[] DevList(int maxDevices = 1024) => ReadDevList(Run(OwnerId, TransportOpcode.DevList, default, 8 + 4 * maxDevices));

    /// <summary>DEV_CREATE: a new managed device of the given virtio device id (1 = net); returns its id.</summary>
    public uint DevCreate(uint virtioDeviceId = 1, uint flags = 0) =>
        ReadDevCreate(Run(OwnerId, TransportOpcode.DevCreate, TransportFrames.DevCreate(virtioDeviceId, flags), DevCreateResultSize));

    public void DevDestroy(ulong id) => Run(id, TransportOpcode.DevDestroy);

    public VdevInfo DevInfo(ulong id) => ReadDevInfo(Run(id, TransportOpcode.DevInfo, default, DevInfoResultSize));

    public UInt128 DevFeaturesGet(ulong id) => ReadFeatures(Run(id, TransportOpcode.DevFeaturesGet, default, FeaturesResultSize));

    public void DrvFeaturesSet(ulong id, UInt128 features) => Run(id, TransportOpcode.DrvFeaturesSet, Features(features));

    public UInt128 DrvFeaturesGet(ulong id) => ReadFeatures(Run(id, TransportOpcode.DrvFeaturesGet, default, FeaturesResultSize));

    public byte StatusGet(ulong id) => ReadStatus(Run(id, TransportOpcode.StatusGet, default, StatusResultSize));

    /// <summary>STATUS_SET; 0 resets the device and returns once the reset is done.</summary>
    public void StatusSet(ulong id, byte status) => Run(id, TransportOpcode.StatusSet, Status(status));

    public uint GenerationGet(ulong id) => ReadGeneration(Run(id, TransportOpcode.GenerationGet, default, GenerationResultSize));

    /// <summary>CFG_READ: <paramref name="length"/> bytes of device config at <paramref name="offset"/>.</summary>
    public byte[] CfgRead(ulong id, uint offset, uint length)
    {
        if (length > 4096)
            throw new ArgumentOutOfRangeException(nameof(length), "at most 4096 bytes per read");
        var r = Run(id, TransportOpcode.CfgRead, TransportFrames.CfgRead(offset, length), (int)length);
        if (r.Length < length)
            throw new FrontEndException($"CfgRead: the device returned {r.Length} of {length} bytes");
        return r[..(int)length];
    }

    public void CfgWrite(ulong id, uint offset, ReadOnlySpan<byte> data) => Run(id, TransportOpcode.CfgWrite, TransportFrames.CfgWrite(offset, data));

    public VqInfo VqInfo(ulong id, ushort queue) => ReadVqInfo(Run(id, TransportOpcode.VqInfo, Index(queue), VqInfoResultSize));

    public void VqSet(ulong id, ushort queue, ushort size, ushort vector, ulong desc, ulong driver, ulong device) =>
        Run(id, TransportOpcode.VqSet, TransportFrames.VqSet(queue, size, vector, desc, driver, device));

    public void VqEnable(ulong id, ushort queue) => Run(id, TransportOpcode.VqEnable, TransportFrames.VqEnable(queue));

    public void VqReset(ulong id, ushort queue) => Run(id, TransportOpcode.VqReset, Index(queue));

    public VqConfig VqGet(ulong id, ushort queue) => ReadVqGet(Run(id, TransportOpcode.VqGet, Index(queue), VqGetResultSize));

    /// <summary>MSI_SET: program a vector's message (a 32-bit write of <paramref name="data"/> at <paramref name="address"/>).</summary>
    public void MsiSet(ulong id, ushort vector, ulong address, uint data, bool masked) =>
        Run(id, TransportOpcode.MsiSet, TransportFrames.MsiSet(vector, address, data, masked));

    /// <summary>CONFIG_VECTOR_SET (0xFFFF = none); returns the vector the device assigned.</summary>
    public ushort ConfigVectorSet(ulong id, ushort vector) =>
        ReadConfigVector(Run(id, TransportOpcode.ConfigVectorSet, Index(vector), ConfigVectorResultSize));

    public MsiVector MsiGet(ulong id, ushort vector) => ReadMsiGet(Run(id, TransportOpcode.MsiGet, Index(vector), MsiGetResultSize));

    public NotifyInfo NotifyInfo(ulong id) => ReadNotifyInfo(Run(id, TransportOpcode.NotifyInfo, default, NotifyInfoResultSize));

    /// <summary>NOTIFY: a driver notification for <paramref name="queue"/> (there is no doorbell over vhost-user).</summary>
    public void Notify(ulong id, ushort queue) => Run(id, TransportOpcode.Notify, Index(queue));
}
