using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// Plays <see cref="HostileSequence"/>s against a device socket, one connection each: the optional
/// bring-up (negotiation, memory table A+B, every ring placed in A with eventfd kick and call),
/// then each step, each message's own descriptors closed right after it was sent. Messages marked
/// Sync are followed by GET_FEATURES and its answer awaited: a back end that does not answer within
/// the timeout has stalled. A connection the back end closes ends the sequence early (that is a
/// legal answer to hostile input); one that the sequence cuts ends it at the cut.
/// </summary>
public sealed class HostileExecutor(string socket, HostileRam ram, int answerTimeoutMs = 10_000)
{
    public int Connections { get; private set; }
    public int MessagesSent { get; private set; }
    public int ClosedByBackEnd { get; private set; }
    /// <summary>Replies whose header broke the protocol, across all connections.</summary>
    public List<string> BadReplies { get; } = new();

    /// <summary>Step the last sequence reached (-1 = bring-up).</summary>
    public int LastStep { get; private set; }

    /// <summary>Runs one sequence. Returns null, or why the back end is deemed stalled.</summary>
    public string? Run(HostileSequence sequence)
    {
        LastStep = -1;
        Connections++;
        using var fe = RawFrontEnd.Connect(socket);
        using var fds = new HostileFds();
        try
        {
            if (sequence.BringUp && BringUp(fe, fds) is { } stalled)
                return stalled;
            ushort txAvail = 0; // the bring-up starts the transmit ring at avail index 0
            for (int i = 0; i < sequence.Steps.Length && !fe.PeerClosed; i++)
            {
                LastStep = i;
                switch (sequence.Steps[i])
                {
                    case HostileMessage m:
                        if (Send(fe, fds, m) is { } problem)
                            return problem;
                        if (m.Ending is not (Ending.Sync or Ending.Pipelined))
                            return null; // cut: the using closes the socket mid-message
                        break;
                    case RingScribble s:
                        Scribble(s, fds);
                        break;
                    case Transmit t:
                        Send(t, fds, ref txAvail);
                        break;
                }
            }
            LastStep = sequence.Steps.Length;
            return fe.PeerClosed ? Closed() : Answer(fe, "the last step");
        }
        finally
        {
            BadReplies.AddRange(fe.BadReplies);
        }
    }

    private string? Closed()
    {
        ClosedByBackEnd++;
        return null;
    }

    private string? Answer(RawFrontEnd fe, string after) => fe.Sync(answerTimeoutMs, out _) switch
    {
        RawFrontEnd.SyncResult.TimedOut => $"the back end did not answer GET_FEATURES within {answerTimeoutMs} ms after {after}",
        RawFrontEnd.SyncResult.Closed => Closed(),
        _ => null,
    };

    private string? Send(RawFrontEnd fe, HostileFds fds, HostileMessage m)
    {
        var made = fds.Make(m.Fds, ram);
        try
        {
            var numbers = made.Select(f => f.Number).ToArray();
            int whole = MessageHeader.Length + m.Payload.Length;
            int? cutAt = m.Ending switch
            {
                Ending.CutInHeader => 1 + m.Payload.Length % (MessageHeader.Length - 1),
                Ending.CutAfterHeader => MessageHeader.Length,
                Ending.CutInPayload => MessageHeader.Length + m.Payload.Length / 2,
                _ => null,
            };
            uint? sizeField = m.Ending == Ending.SizeLies ? (uint)Math.Min(m.Payload.Length + 64, MessageHeader.MaxPayload) : null;
            if (sizeField <= (uint)m.Payload.Length)
                sizeField = null; // cannot promise more than the largest payload: send it as it is
            fe.SendMessage(m.Request, m.Flags, m.Payload, numbers, sizeField, cutAt < whole ? cutAt : null);
            MessagesSent++;
        }
        finally
        {
            foreach (var fd in made)
                fd.Dispose(); // the back end now holds the only copy
        }
        if (fe.PeerClosed)
            return Closed();
        return m.Ending == Ending.Sync ? Answer(fe, $"step {LastStep}") : null;
    }

    private void Scribble(RingScribble s, HostileFds fds)
    {
        for (int i = 0; i < s.Descriptors.Length; i++)
        {
            var (address, length, flags, next) = s.Descriptors[i];
            ram.WriteDescriptor(s.Queue, i, address, length, flags, next);
        }
        for (int i = 0; i < s.Heads.Length; i++)
            ram.Publish(s.Queue, (ushort)(s.AvailIndex - s.Heads.Length + i), s.Heads[i], s.AvailIndex);
        foreach (var doorbell in fds.Doorbells)
            doorbell.Signal();
    }

    /// <summary>Well-formed frames on queue 1 (as the bring-up placed it, size 256), published in order, then kicks.</summary>
    private void Send(Transmit t, HostileFds fds, ref ushort availIndex)
    {
        const int Header = 12, Length = 60;
        for (int i = 0; i < t.Frames; i++, availIndex++)
        {
            int slot = availIndex % 256;
            ulong buffer = HostileRam.BufferArea + (ulong)slot * 128;
            var frame = ram.Span(buffer, Header + Length);
            frame.Clear();
            (t.DestinationVf < 0 ? Devices.Switch.Mac.Broadcast : GroupUnderAttack.MacOf(t.DestinationVf)).Write(frame[Header..]);
            GroupUnderAttack.MacOf(t.SourceVf).Write(frame[(Header + 6)..]);
            frame[Header + 12] = 0x88;
            frame[Header + 13] = 0xb6;
            ram.WriteDescriptor(1, slot, buffer, Header + Length, 0, 0);
            ram.Publish(1, (ushort)slot, (ushort)slot, (ushort)(availIndex + 1));
        }
        foreach (var doorbell in fds.Doorbells)
            doorbell.Signal();
    }

    /// <summary>
    /// Connects and brings the device up properly, leaving the connection open (the caller disposes
    /// it and <paramref name="fds"/>, which keeps the rings' kick and call eventfds as doorbells).
    /// Null when the back end closed the connection instead; TimeoutException when it did not answer.
    /// </summary>
    public RawFrontEnd? Open(HostileFds fds)
    {
        var fe = RawFrontEnd.Connect(socket);
        if (BringUp(fe, fds) is { } problem)
        {
            fe.Dispose();
            throw new TimeoutException(problem);
        }
        if (!fe.PeerClosed)
            return fe;
        fe.Dispose();
        return null;
    }

    /// <summary>A proper bring-up, as QEMU does it, so the steps hit a device with running rings.</summary>
    private string? BringUp(RawFrontEnd fe, HostileFds fds)
    {
        // Fresh rings: the bring-up starts every queue at avail index 0.
        for (int q = 0; q < HostileMessages.Queues; q++)
        {
            ram.Span(HostileRam.DescTable(q), (int)HostileRam.RingStride).Clear();
        }
        if (fe.Sync(answerTimeoutMs, out ulong features) != RawFrontEnd.SyncResult.Answered)
            return fe.PeerClosed ? Closed() : "the back end did not answer GET_FEATURES on a new connection";
        fe.SendMessage((uint)FrontendRequest.SetFeatures, MessageHeader.Version, BitConverter.GetBytes(features));
        fe.SendMessage((uint)FrontendRequest.GetProtocolFeatures, MessageHeader.Version, default);
        if (fe.ReadMessage(answerTimeoutMs, out _) is not { } reply || reply.Payload.Length != 8)
            return fe.PeerClosed ? Closed() : "the back end did not answer GET_PROTOCOL_FEATURES";
        fe.SendMessage((uint)FrontendRequest.SetProtocolFeatures, MessageHeader.Version, reply.Payload);
        fe.SendMessage((uint)FrontendRequest.SetOwner, MessageHeader.Version, default);
        SendWithFds(fe, fds, FrontendRequest.SetMemTable, MemoryTablePayload.Write([HostileRam.A, HostileRam.B]),
            [new FdSpec(FdKind.RamA), new FdSpec(FdKind.RamB)]);
        for (int q = 0; q < HostileMessages.Queues; q++)
        {
            var state = new byte[VringState.Size];
            new VringState((uint)q, 256).Write(state);
            fe.SendMessage((uint)FrontendRequest.SetVringNum, MessageHeader.Version, state);
            new VringState((uint)q, 0).Write(state);
            fe.SendMessage((uint)FrontendRequest.SetVringBase, MessageHeader.Version, state);
            var addr = new byte[VringAddress.Size];
            new VringAddress((uint)q, 0, HostileRam.Uva(HostileRam.DescTable(q)), HostileRam.Uva(HostileRam.Used(q)),
                HostileRam.Uva(HostileRam.Avail(q)), 0).Write(addr);
            fe.SendMessage((uint)FrontendRequest.SetVringAddr, MessageHeader.Version, addr);
            SendWithFds(fe, fds, FrontendRequest.SetVringCall, BitConverter.GetBytes((ulong)q), [new FdSpec(FdKind.EventFd)]);
            SendWithFds(fe, fds, FrontendRequest.SetVringKick, BitConverter.GetBytes((ulong)q), [new FdSpec(FdKind.EventFd)]);
            new VringState((uint)q, 1).Write(state);
            fe.SendMessage((uint)FrontendRequest.SetVringEnable, MessageHeader.Version, state);
        }
        MessagesSent += 6 + 6 * HostileMessages.Queues;
        return fe.PeerClosed ? Closed() : Answer(fe, "the bring-up");
    }

    private void SendWithFds(RawFrontEnd fe, HostileFds fds, FrontendRequest request, byte[] payload, FdSpec[] specs)
    {
        var made = fds.Make(specs, ram);
        try
        {
            fe.SendMessage((uint)request, MessageHeader.Version, payload, made.Select(f => f.Number).ToArray());
        }
        finally
        {
            foreach (var fd in made)
                fd.Dispose();
        }
    }
}
