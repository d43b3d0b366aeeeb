using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Echo;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Fuzz;

/// <summary>
/// A front end's byte stream, descriptors included, through the real message reader (over a
/// socketpair), the message rules and a real back end's state machine, serving an echo or a
/// virtio-net device on a real worker. Each iteration is one connection: everything it made is
/// closed at the end (the back end's Disconnected, as when a front end goes away).
///
/// Input: a set-up byte (device kind and shape), then messages, each a descriptor byte (how many
/// descriptors to attach and of which kind: eventfds, signalled eventfds, memfds of 64 KiB or 4 KiB,
/// a pipe, a socket), a 12-byte header, and as much payload as the header's size asks for (fewer
/// bytes at the end of the input: the connection then closes mid-message).
/// </summary>
public static class MessageTarget
{
    public const int MemFdSize = 0x10000;

    private static readonly Lazy<(WorkerPool Workers, L2Switch Switch, ILogger Logger)> Shared = new(() =>
    {
        var loggers = FormattingLoggerProvider.Factory;
        return (new WorkerPool(1, loggers), new L2Switch(loggers.CreateLogger("fuzz-switch")), loggers.CreateLogger("fuzz-backend"));
    });

    public static void Run(ReadOnlySpan<byte> data)
    {
        var (workers, @switch, logger) = Shared.Value;
        var worker = workers.Workers[0];
        var input = new FuzzInput(data);
        byte setup = input.Byte();
        NetDevice? net = null;
        IVirtioDevice device;
        if ((setup & 1) == 0)
        {
            device = new EchoDevice("fuzz-echo", queueCount: 1 + (setup >> 1) % 4, maxQueueSize: (setup & 0x10) != 0 ? 256 : 1024);
        }
        else
        {
            net = new NetDevice("fuzz-net", new NetDeviceOptions
            {
                Mac = new Mac(0x0256_5600_0001UL),
                QueuePairs = 1 + (setup >> 1) % 2,
                ControlQueue = (setup & 4) == 0,
                Offloads = (setup & 8) == 0,
                Trusted = (setup & 0x20) != 0,
            }, @switch, action => worker.Loop.Post(action), logger);
            @switch.Attach(net);
            device = net;
        }

        var backend = new VhostUserBackend(device, workers, logger, pinnedWorker: worker);
        var (front, back) = UnixSocket.CreatePair();
        back.Descriptor.SetNonBlocking(true);
        var reader = new MessageReader(back);
        var frame = new byte[MessageHeader.Length + MessageHeader.MaxPayload + 64];
        bool open = true;
        try
        {
            while (open && !input.IsEmpty)
            {
                byte fdSpec = input.Byte();
                var header = frame.AsSpan(0, MessageHeader.Length);
                header.Clear();
                input.Take(MessageHeader.Length).CopyTo(header);
                // A size past the limit is refused from the header alone: a few bytes of payload suffice.
                int size = (int)Math.Min(MessageHeader.Read(header).Size, (uint)(frame.Length - MessageHeader.Length));
                var payload = input.Take(size);
                payload.CopyTo(frame.AsSpan(MessageHeader.Length));
                Send(front, frame.AsSpan(0, MessageHeader.Length + payload.Length), fdSpec);
                open = Serve(reader, backend);
            }
        }
        finally
        {
            front.Dispose();
            // The front end is gone: whatever it left in the socket is read (and its descriptors
            // closed), as the endpoint does; a stream found corrupt or dropped is not read again.
            if (open)
                Serve(reader, backend);
            reader.Dispose();
            back.Dispose();
            backend.Disconnected();
            if (net != null)
                @switch.Detach(net);
        }
        // A handler that threw something the back end did not expect is refused as Internal: a bug.
        FuzzInvariantException.Check(backend.Rejections(MessageErrorKind.Internal) == 0, $"a message handler failed: {backend.LastRejection}");
        FormattingLoggerProvider.ThrowIfUnexpected();
    }

    /// <summary>Handles every whole message waiting; false once the connection is (or must be) closed.</summary>
    private static bool Serve(MessageReader reader, VhostUserBackend backend)
    {
        while (true)
        {
            switch (reader.TryRead(out var message, out _))
            {
                case MessageReader.Status.Message:
                    var result = backend.Handle(message!);
                    message!.Dispose();
                    if (result.CloseConnection)
                        return false;
                    break;
                case MessageReader.Status.WouldBlock:
                    return true;
                default:
                    return false;
            }
        }
    }

    /// <summary>Sends one message with the descriptors <paramref name="fdSpec"/> asks for, then closes this side's copies.</summary>
    private static void Send(UnixSocket front, ReadOnlySpan<byte> bytes, byte fdSpec)
    {
        int count = (fdSpec & 0xf) % (MessageHeader.MaxFds + 2); // one past the limit: the reader must drop the stream
        var owned = new List<IDisposable>(count + 1);
        Span<int> numbers = stackalloc int[count];
        try
        {
            for (int i = 0; i < count; i++)
            {
                // The kind: mostly the first one, the next ones by the following kinds.
                int kind = ((fdSpec >> 4) + i * ((fdSpec >> 4) >= 10 ? 0 : 1)) & 0xf;
                numbers[i] = MakeFd(kind, owned);
            }
            try
            {
                front.Send(bytes, numbers, timeoutMs: 1000);
            }
            catch (Exception e) when (e is NativeException or TimeoutException or IOException)
            {
                // The back end already closed its side (a dropped connection): nothing more arrives.
            }
        }
        finally
        {
            foreach (var o in owned)
                o.Dispose();
        }
    }

    private static int MakeFd(int kind, List<IDisposable> owned)
    {
        switch (kind)
        {
            case <= 7:
                var plain = new EventFd();
                owned.Add(plain);
                return plain.Descriptor.Number;
            case <= 9:
                var signalled = new EventFd();
                owned.Add(signalled);
                signalled.Signal();
                return signalled.Descriptor.Number;
            case <= 12:
                var ram = MemFd.Create("fuzz-ram", MemFdSize);
                owned.Add(ram);
                return ram.Number;
            case 13:
                var small = MemFd.Create("fuzz-small", 0x1000);
                owned.Add(small);
                return small.Number;
            case 14:
                var (read, write) = PeerStream.CreatePipe();
                owned.Add(read);
                owned.Add(write);
                return read.Number;
            default:
                var (mine, theirs) = UnixSocket.CreatePair();
                owned.Add(mine);
                owned.Add(theirs);
                return theirs.Descriptor.Number;
        }
    }
}
