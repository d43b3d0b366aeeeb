using System.Buffers.Binary;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.FrontEnd.Owner;

/// <summary>
/// A legacy virtio-net driver for one VF, driving it only through the owner's legacy admin commands,
/// the way a guest behind Linux's virtio-vfio-pci does: the VF's own vhost-user connection (the VMM's
/// side) gives the device its DMA space (memory table), interrupts (call descriptors) and doorbells
/// (kick descriptors) and nothing else. Brings the device up with the legacy sequence (reset, ACK,
/// DRIVER, features, queue PFNs, MSI-X vectors, DRIVER_OK), then sends and receives frames with the
/// 10-byte legacy header.
/// </summary>
public sealed class LegacyNetDriver : IDisposable
{
    public const int ReceiveQueue = 0, TransmitQueue = 1;
    private const int HeaderSize = 10;   // struct virtio_net_hdr without num_buffers
    private const int BufferSize = 2048;

    private readonly VhostUserFrontEnd _vmm;
    private readonly Dictionary<ushort, ulong> _rxBuffers = new();
    private readonly Queue<ulong> _txBuffers = new();

    private LegacyNetDriver(LegacyAccess registers, VhostUserFrontEnd vmm, GuestRam ram)
    {
        Registers = registers;
        _vmm = vmm;
        Ram = ram;
    }

    public LegacyAccess Registers { get; }
    /// <summary>The VF's own vhost-user connection (the VMM's side).</summary>
    public VhostUserFrontEnd Vmm => _vmm;
    public GuestRam Ram { get; }
    public DriverQueue Rx { get; private set; } = null!;
    public DriverQueue Tx { get; private set; } = null!;
    public uint HostFeatures { get; private set; }
    public uint GuestFeatures { get; private set; }
    public byte[] Mac => Registers.ReadDevice(LegacyLayout.NetMac, 6);
    public bool LinkUp => (BinaryPrimitives.ReadUInt16LittleEndian(Registers.ReadDevice(LegacyLayout.NetStatus, 2)) & 1) != 0;

    /// <param name="vfSocket">The VF's own socket, where this driver's "VMM" supplies memory and descriptors.</param>
    /// <param name="wantedFeatures">Legacy feature bits the driver understands (intersected with the device's).</param>
    /// <param name="doorbells">Notify through kick descriptors (LEGACY_NOTIFY_INFO) instead of COMMON_CFG_WRITE at Queue Notify.</param>
    public static LegacyNetDriver Start(AdminQueueClient admin, ulong vf, string vfSocket, uint wantedFeatures = (1u << 5) | (1u << 16),
        bool doorbells = false, int receiveBuffers = 64)
    {
        var registers = new LegacyAccess(admin, vf);
        var vmm = VhostUserFrontEnd.Connect(vfSocket, TimeSpan.FromSeconds(10));
        var ram = new GuestRam(8 << 20);
        var driver = new LegacyNetDriver(registers, vmm, ram);
        try
        {
            driver.Doorbells = doorbells;
            driver.BringUp(wantedFeatures, receiveBuffers);
            return driver;
        }
        catch
        {
            driver.Dispose();
            throw;
        }
    }

    public bool Doorbells { get; private set; }

    private void BringUp(uint wantedFeatures, int receiveBuffers)
    {
        // The VMM side: memory, and per queue an interrupt and a doorbell descriptor. No features, no rings.
        if (VirtioFeature.Has(_vmm.GetFeatures(), VirtioFeature.VhostUserProtocolFeatures))
            _vmm.SetProtocolFeatures(_vmm.GetProtocolFeatures());
        _vmm.SetOwner();
        _vmm.SetMemTable(Ram);

        var r = Registers;
        r.WriteCommon(LegacyLayout.DeviceStatus, 1, 0);                                   // reset
        r.WriteCommon(LegacyLayout.DeviceStatus, 1, (uint)DeviceStatus.Acknowledge);
        r.WriteCommon(LegacyLayout.DeviceStatus, 1, (uint)(DeviceStatus.Acknowledge | DeviceStatus.Driver));
        HostFeatures = r.ReadCommon(LegacyLayout.HostFeatures, 4);
        GuestFeatures = HostFeatures & wantedFeatures;
        r.WriteCommon(LegacyLayout.GuestFeatures, 4, GuestFeatures);
        r.WriteCommon(LegacyLayout.ConfigVector, 2, 0);
        Rx = SetUpQueue(ReceiveQueue, vector: 1);
        Tx = SetUpQueue(TransmitQueue, vector: 2);
        r.WriteCommon(LegacyLayout.DeviceStatus, 1, (uint)(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.DriverOk));
        for (int i = 0; i < receiveBuffers; i++)
            PostReceiveBuffer(Ram.Allocate(BufferSize));
        NotifyQueue(ReceiveQueue);
    }

    private DriverQueue SetUpQueue(int index, ushort vector)
    {
        var r = Registers;
        r.WriteCommon(LegacyLayout.QueueSelect, 2, (uint)index);
        int size = (int)r.ReadCommon(LegacyLayout.QueueSize, 2);
        if (size == 0)
            throw new FrontEndException($"VF {Registers.Vf}: queue {index} does not exist");
        var q = new DriverQueue(Ram, index, size, legacyLayout: true);
        _vmm.SetVringCall((uint)index, q.Call);
        _vmm.SetVringKick((uint)index, q.Kick);
        r.WriteCommon(LegacyLayout.QueueVector, 2, vector);
        if (r.ReadCommon(LegacyLayout.QueueVector, 2) != vector)
            throw new FrontEndException($"VF {Registers.Vf}: MSI-X vector {vector} was not assigned to queue {index}");
        r.WriteCommon(LegacyLayout.QueueAddress, 4, q.LegacyPfn);
        return q;
    }

    private void NotifyQueue(int index)
    {
        if (Doorbells)
            (index == ReceiveQueue ? Rx : Tx).Notify();
        else
            Registers.WriteCommon(LegacyLayout.QueueNotify, 2, (uint)index);
    }

    private void PostReceiveBuffer(ulong address)
    {
        ushort head = Rx.AddChain([new BufferSpec(address, BufferSize, true)]);
        _rxBuffers[head] = address;
    }

    /// <summary>Sends one Ethernet frame and waits until the device has taken it.</summary>
    public void Send(ReadOnlySpan<byte> frame, int timeoutMs = 10_000)
    {
        if (frame.Length > BufferSize - HeaderSize)
            throw new ArgumentException("frame too large", nameof(frame));
        ulong buffer = _txBuffers.Count > 0 ? _txBuffers.Dequeue() : Ram.Allocate(BufferSize);
        var span = Ram.Span(buffer, HeaderSize + frame.Length);
        span[..HeaderSize].Clear();
        frame.CopyTo(span[HeaderSize..]);
        Tx.AddChain([new BufferSpec(buffer, (uint)(HeaderSize + frame.Length), false)]);
        NotifyQueue(TransmitQueue);
        Tx.WaitUsed(timeoutMs);
        _txBuffers.Enqueue(buffer);
    }

    /// <summary>Waits for the next received frame (without its header), reposting the buffer; null on timeout.</summary>
    public byte[]? Receive(int timeoutMs)
    {
        (ushort id, uint length) used;
        try
        {
            used = Rx.WaitUsed(timeoutMs);
        }
        catch (TimeoutException)
        {
            return null;
        }
        ulong address = _rxBuffers[used.id];
        _rxBuffers.Remove(used.id);
        var frame = used.length > HeaderSize ? Ram.Span(address + HeaderSize, (int)used.length - HeaderSize).ToArray() : [];
        PostReceiveBuffer(address);
        NotifyQueue(ReceiveQueue);
        return frame;
    }

    /// <summary>Reads (and so clears) the ISR status.</summary>
    public byte ReadIsr() => (byte)Registers.ReadCommon(LegacyLayout.IsrStatus, 1);

    public byte Status => (byte)Registers.ReadCommon(LegacyLayout.DeviceStatus, 1);

    /// <summary>Resets the device (status 0) and lets go of the VF: its rings stop, the VMM side disconnects.</summary>
    public void Dispose()
    {
        try
        {
            Registers.WriteCommon(LegacyLayout.DeviceStatus, 1, 0);
        }
        catch (Exception e) when (e is FrontEndException or TimeoutException or IOException)
        {
            // The owner or the VF may already be gone; closing the VMM side resets the VF anyway.
        }
        _vmm.Dispose();
        Rx?.Dispose();
        Tx?.Dispose();
        Ram.Dispose();
    }
}
