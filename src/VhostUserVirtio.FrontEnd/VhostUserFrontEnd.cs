using System.Buffers.Binary;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.FrontEnd;

/// <summary>A reply that broke the protocol, or a refusal (failure ack) from the back end.</summary>
public class FrontEndException(string message) : Exception(message);

/// <summary>The back end closed the connection before the reply was complete.</summary>
public sealed class BackEndClosedException() : FrontEndException("the back end closed the connection");

/// <summary>
/// The front-end side of one vhost-user connection, as QEMU would drive it: typed requests with
/// reply checks (flags exactly REPLY|v1, same request code, expected size), REPLY_ACK when
/// negotiated, and raw access for sending malformed messages on purpose.
/// </summary>
public sealed class VhostUserFrontEnd : IDisposable
{
    private readonly UnixSocket _socket;

    private VhostUserFrontEnd(UnixSocket socket) => _socket = socket;

    /// <summary>Default time to wait for a reply before declaring the back end hung.</summary>
    public int ReplyTimeoutMs { get; set; } = 10_000;

    /// <summary>Protocol features both sides agreed on (after <see cref="SetProtocolFeatures"/>).</summary>
    public ProtocolFeatures Negotiated { get; private set; }

    /// <summary>Connects to a back end's socket, retrying until <paramref name="timeout"/> (the socket may not exist yet).</summary>
    public static VhostUserFrontEnd Connect(string path, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(10));
        while (true)
        {
            try
            {
                return new VhostUserFrontEnd(UnixSocket.Connect(path));
            }
            catch (NativeException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(20);
            }
        }
    }

    /// <summary>Waits for a back end in client mode to connect to <paramref name="listener"/>.</summary>
    public static VhostUserFrontEnd Accept(UnixSocket listener, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline)
        {
            if (listener.Accept() is { } socket)
            {
                socket.Descriptor.SetNonBlocking(false);
                return new VhostUserFrontEnd(socket);
            }
            listener.Descriptor.WaitReadable(100);
        }
        throw new TimeoutException($"no back end connected within {timeout}");
    }

    // ---- raw framing ----

    /// <summary>Sends one message exactly as given (any header values, any descriptors).</summary>
    public void SendRaw(uint request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default) =>
        MessageWriter.Send(_socket, request, flags, payload, fds);

    /// <summary>Sends arbitrary bytes (e.g. a header whose size field lies).</summary>
    public void SendBytes(ReadOnlySpan<byte> bytes, ReadOnlySpan<int> fds = default) => _socket.Send(bytes, fds);

    /// <summary>Reads one message from the back end. Throws on timeout or end of stream.</summary>
    public (MessageHeader Header, byte[] Payload) ReadMessage(int? timeoutMs = null)
    {
        var header = new byte[MessageHeader.Length];
        ReadExactly(header, timeoutMs ?? ReplyTimeoutMs);
        var h = MessageHeader.Read(header);
        if (h.Size > MessageHeader.MaxPayload)
            throw new FrontEndException($"reply size {h.Size} is too large");
        var payload = new byte[h.Size];
        ReadExactly(payload, timeoutMs ?? ReplyTimeoutMs);
        return (h, payload);
    }

    /// <summary>True when the back end has closed the connection (reads end of stream within the timeout).</summary>
    public bool WaitForClose(int timeoutMs)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        var buf = new byte[64];
        var fds = new List<FileDescriptor>();
        while (Environment.TickCount64 < deadline)
        {
            if (!_socket.Descriptor.WaitReadable((int)Math.Max(1, deadline - Environment.TickCount64)))
                return false;
            try
            {
                int n = _socket.Receive(buf, fds, out _);
                foreach (var fd in fds) fd.Dispose();
                fds.Clear();
                if (n == 0)
                    return true;
            }
            catch (NativeException)
            {
                return true; // ECONNRESET and friends
            }
        }
        return false;
    }

    private void ReadExactly(Span<byte> buffer, int timeoutMs, List<FileDescriptor>? keep = null)
    {
        var fds = new List<FileDescriptor>();
        int done = 0;
        while (done < buffer.Length)
        {
            if (!_socket.Descriptor.WaitReadable(timeoutMs))
                throw new TimeoutException($"no reply from the back end within {timeoutMs} ms");
            int n = _socket.Receive(buffer[done..], fds, out _);
            if (keep != null)
                keep.AddRange(fds);
            else
                foreach (var fd in fds) fd.Dispose();
            fds.Clear();
            if (n == 0)
                throw new BackEndClosedException();
            if (n > 0)
                done += n;
        }
    }

    // ---- request/reply helpers ----

    /// <summary>
    /// Sends a request. If it has a reply body, reads and checks it. Otherwise, when
    /// <paramref name="ack"/> is set and REPLY_ACK was negotiated, asks for an ack and throws on failure.
    /// </summary>
    public byte[]? Request(FrontendRequest request, ReadOnlySpan<byte> payload = default, ReadOnlySpan<int> fds = default,
        bool hasReplyBody = false, bool ack = true)
    {
        bool needAck = !hasReplyBody && ack && (Negotiated & ProtocolFeatures.ReplyAck) != 0;
        uint flags = MessageHeader.Version | (needAck ? MessageHeader.NeedReplyFlag : 0);
        SendRaw((uint)request, flags, payload, fds);
        if (!hasReplyBody && !needAck)
            return null;
        var (h, body) = ReadReply(request);
        if (needAck)
        {
            if (body.Length != 8)
                throw new FrontEndException($"{request} ack has {body.Length} bytes, expected 8");
            ulong status = BinaryPrimitives.ReadUInt64LittleEndian(body);
            if (status != 0)
                throw new FrontEndException($"back end refused {request} (ack {status})");
            return null;
        }
        return body;
    }

    /// <summary>Reads a reply and checks flags and request code as QEMU does.</summary>
    public (MessageHeader Header, byte[] Payload) ReadReply(FrontendRequest request)
    {
        var (h, body) = ReadMessage();
        if (h.Flags != (MessageHeader.ReplyFlag | MessageHeader.Version))
            throw new FrontEndException($"reply flags 0x{h.Flags:x}, expected 0x5");
        if (h.Request != (uint)request)
            throw new FrontEndException($"reply is for request {h.Request}, expected {(uint)request} ({request})");
        return (h, body);
    }

    private ulong RequestU64(FrontendRequest request)
    {
        var body = Request(request, hasReplyBody: true)!;
        if (body.Length != 8)
            throw new FrontEndException($"{request} reply has {body.Length} bytes, expected 8");
        return BinaryPrimitives.ReadUInt64LittleEndian(body);
    }

    private void SendU64(FrontendRequest request, ulong value, ReadOnlySpan<int> fds = default, bool ack = true)
    {
        Span<byte> p = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, value);
        Request(request, p, fds, ack: ack);
    }

    public ulong GetFeatures() => RequestU64(FrontendRequest.GetFeatures);
    public void SetFeatures(ulong features) => SendU64(FrontendRequest.SetFeatures, features);
    public void SetOwner() => Request(FrontendRequest.SetOwner);
    public void ResetOwner() => Request(FrontendRequest.ResetOwner);
    public void ResetDevice() => Request(FrontendRequest.ResetDevice);
    public ProtocolFeatures GetProtocolFeatures() => (ProtocolFeatures)RequestU64(FrontendRequest.GetProtocolFeatures);

    public void SetProtocolFeatures(ProtocolFeatures features)
    {
        SendU64(FrontendRequest.SetProtocolFeatures, (ulong)features, ack: false);
        Negotiated = features;
    }

    public ulong GetQueueNum() => RequestU64(FrontendRequest.GetQueueNum);
    public ulong GetMaxMemSlots() => RequestU64(FrontendRequest.GetMaxMemSlots);
    public ulong GetStatus() => RequestU64(FrontendRequest.GetStatus);

    /// <summary>
    /// SET_DEVICE_STATE_FD: hands the back end one end of a pipe to save its state into (or load it
    /// from), in the stopped phase. Returns the reply: bits 0–7 an error, bit 8 "no descriptor returned".
    /// </summary>
    public ulong SetDeviceStateFd(uint direction, int fd, uint phase = DeviceStateTransfer.PhaseStopped)
    {
        Span<byte> p = stackalloc byte[DeviceStateTransfer.Size];
        new DeviceStateTransfer(direction, phase).Write(p);
        var body = Request(FrontendRequest.SetDeviceStateFd, p, [fd], hasReplyBody: true)!;
        if (body.Length != 8)
            throw new FrontEndException($"SET_DEVICE_STATE_FD reply has {body.Length} bytes, expected 8");
        return BinaryPrimitives.ReadUInt64LittleEndian(body);
    }

    /// <summary>CHECK_DEVICE_STATE: 0 when the transfer worked (a loaded state is then applied).</summary>
    public ulong CheckDeviceState() => RequestU64(FrontendRequest.CheckDeviceState);
    public void SetStatus(DeviceStatus status) => SendU64(FrontendRequest.SetStatus, (ulong)status);

    public void SetMemTable(GuestRam ram) =>
        Request(FrontendRequest.SetMemTable, MemoryTablePayload.Write(ram.Describe()), ram.Fds);

    public void AddMemRegion(RamRegion r) =>
        Request(FrontendRequest.AddMemReg, SingleRegionPayload.Write(new MemoryRegionDescription(r.Gpa, r.Size, r.UserAddress, r.MmapOffset)), new[] { r.Fd.Number });

    public void RemoveMemRegion(RamRegion r) =>
        Request(FrontendRequest.RemMemReg, SingleRegionPayload.Write(new MemoryRegionDescription(r.Gpa, r.Size, r.UserAddress, r.MmapOffset)));

    public void SetVringNum(uint index, uint num) => SendState(FrontendRequest.SetVringNum, index, num);
    public void SetVringBase(uint index, uint num) => SendState(FrontendRequest.SetVringBase, index, num);
    public void SetVringEnable(uint index, bool enable) => SendState(FrontendRequest.SetVringEnable, index, enable ? 1u : 0u);

    public uint GetVringBase(uint index)
    {
        Span<byte> p = stackalloc byte[VringState.Size];
        new VringState(index, 0).Write(p);
        var body = Request(FrontendRequest.GetVringBase, p, hasReplyBody: true)!;
        if (body.Length != VringState.Size)
            throw new FrontEndException($"GET_VRING_BASE reply has {body.Length} bytes");
        var state = VringState.Read(body);
        if (state.Index != index)
            throw new FrontEndException($"GET_VRING_BASE reply names queue {state.Index}, asked for {index}");
        return state.Num;
    }

    public void SetVringAddr(uint index, ulong descUva, ulong usedUva, ulong availUva) =>
        SetVringAddr(new VringAddress(index, 0, descUva, usedUva, availUva, 0));

    /// <summary>SET_VRING_ADDR with flags and log address (VHOST_VRING_F_LOG, log_guest_addr).</summary>
    public void SetVringAddr(VringAddress address)
    {
        Span<byte> p = stackalloc byte[VringAddress.Size];
        address.Write(p);
        Request(FrontendRequest.SetVringAddr, p);
    }

    /// <summary>
    /// SET_LOG_BASE with LOG_SHMFD, as QEMU sends it: the log's descriptor, size and offset; waits for
    /// the back end's u64 reply and throws when it is not 0.
    /// </summary>
    public void SetLogBase(FileDescriptor log, ulong size, ulong offset = 0)
    {
        Span<byte> p = stackalloc byte[LogPayload.Size];
        new LogPayload(size, offset).Write(p);
        var body = Request(FrontendRequest.SetLogBase, p, new[] { log.Number }, hasReplyBody: true)!;
        if (body.Length != 8)
            throw new FrontEndException($"SET_LOG_BASE reply has {body.Length} bytes, expected 8");
        if (BinaryPrimitives.ReadUInt64LittleEndian(body) != 0)
            throw new FrontEndException($"back end refused SET_LOG_BASE (reply {BinaryPrimitives.ReadUInt64LittleEndian(body)})");
    }

    public void SetVringKick(uint index, EventFd? fd) => SendVringFile(FrontendRequest.SetVringKick, index, fd);
    public void SetVringCall(uint index, EventFd? fd) => SendVringFile(FrontendRequest.SetVringCall, index, fd);
    public void SetVringErr(uint index, EventFd? fd) => SendVringFile(FrontendRequest.SetVringErr, index, fd);

    private void SendVringFile(FrontendRequest request, uint index, EventFd? fd) =>
        SendU64(request, VringFile.Encode(index, fd == null), fd == null ? default : new[] { fd.Descriptor.Number });

    private void SendState(FrontendRequest request, uint index, uint num)
    {
        Span<byte> p = stackalloc byte[VringState.Size];
        new VringState(index, num).Write(p);
        Request(request, p);
    }

    /// <summary>GET_CONFIG: returns the bytes, or null when the back end answered with the zero-size error form.</summary>
    public byte[]? GetConfig(uint offset, uint size)
    {
        var p = new byte[ConfigHeader.Length + size];
        new ConfigHeader(offset, size, 0).Write(p);
        var body = Request(FrontendRequest.GetConfig, p, hasReplyBody: true)!;
        if (body.Length == 0)
            return null;
        if (body.Length != p.Length)
            throw new FrontEndException($"GET_CONFIG reply has {body.Length} bytes, expected {p.Length}");
        return body[ConfigHeader.Length..];
    }

    public void SetConfig(uint offset, ReadOnlySpan<byte> data)
    {
        var p = new byte[ConfigHeader.Length + data.Length];
        new ConfigHeader(offset, (uint)data.Length, 0).Write(p);
        data.CopyTo(p.AsSpan(ConfigHeader.Length));
        Request(FrontendRequest.SetConfig, p);
    }

    /// <summary>
    /// GET_INFLIGHT_FD: asks the back end for an inflight buffer for <paramref name="queues"/> queues of
    /// <paramref name="queueSize"/>. Returns the reply and the buffer's descriptor (null when the back
    /// end has none to give: mmap_size 0, as QEMU reads it).
    /// </summary>
    public InflightPayload GetInflightFd(ushort queues, ushort queueSize, out FileDescriptor? fd)
    {
        fd = null;
        SendRaw((uint)FrontendRequest.GetInflightFd, MessageHeader.Version, new InflightPayload(0, 0, queues, queueSize).ToArray());
        var fds = new List<FileDescriptor>();
        try
        {
            var header = new byte[MessageHeader.Length];
            ReadExactly(header, ReplyTimeoutMs, fds);
            var h = MessageHeader.Read(header);
            if (h.Flags != (MessageHeader.ReplyFlag | MessageHeader.Version) || h.Request != (uint)FrontendRequest.GetInflightFd)
                throw new FrontEndException($"GET_INFLIGHT_FD reply has flags 0x{h.Flags:x} and request {h.Request}");
            if (h.Size != InflightPayload.Size)
                throw new FrontEndException($"GET_INFLIGHT_FD reply has {h.Size} bytes, expected {InflightPayload.Size}");
            var body = new byte[h.Size];
            ReadExactly(body, ReplyTimeoutMs, fds);
            var reply = InflightPayload.Read(body);
            if (reply.MmapSize == 0)
                return reply;
            if (fds.Count != 1)
                throw new FrontEndException($"GET_INFLIGHT_FD reply came with {fds.Count} descriptors, expected 1");
            fd = fds[0];
            fds.Clear();
            return reply;
        }
        finally
        {
            foreach (var f in fds) f.Dispose();
        }
    }

    /// <summary>GET_INFLIGHT_FD, mapped: the buffer the front end keeps across back-end restarts, or null when the back end gives none.</summary>
    public InflightRegion? GetInflightRegion(ushort queues, ushort queueSize)
    {
        var reply = GetInflightFd(queues, queueSize, out var fd);
        return fd == null ? null : InflightRegion.Open(fd, reply.MmapSize, reply.MmapOffset, queues, queueSize);
    }

    /// <summary>SET_INFLIGHT_FD: hands an inflight buffer (back) to the back end.</summary>
    public void SetInflightFd(FileDescriptor fd, InflightPayload payload) =>
        Request(FrontendRequest.SetInflightFd, payload.ToArray(), [fd.Number]);

    /// <inheritdoc cref="SetInflightFd(FileDescriptor, InflightPayload)"/>
    public void SetInflightFd(InflightRegion region) =>
        SetInflightFd(region.Descriptor, new InflightPayload(region.Size, region.Offset, (ushort)region.QueueCount, (ushort)region.QueueSize));

    public void Dispose() => _socket.Dispose();
}
