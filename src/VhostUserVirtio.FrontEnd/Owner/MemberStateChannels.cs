using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Nerdbank.Streams;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.FrontEnd.Owner;

/// <summary>
/// One side of a member's state moving between owners: stop the member, move its device parts
/// stream through a pipe, then resume it (or give up and resume it as it was). The admin commands
/// depend on the owner's profile (docs/owner-binding.md "Admin command profiles").
/// </summary>
public abstract class MemberStateChannel(OwnerDriver owner, ulong member)
{
    /// <summary>Largest piece of the stream one admin command carries.</summary>
    public const int ChunkSize = 1024;

    protected const ushort SrIov = (ushort)AdminGroupType.SrIov, Self = (ushort)AdminGroupType.Self;

    public OwnerDriver Owner { get; } = owner;
    public ulong Member { get; } = member;

    /// <summary>The profile's name, for progress and errors.</summary>
    public abstract string Profile { get; }

    /// <summary>Stops (freezes) the member: its rings no longer run, every buffer it took is written back.</summary>
    public abstract void Stop();

    /// <summary>Resumes the member. After a completed <see cref="MemberStateSink.Commit"/> the member runs with the state it received.</summary>
    public abstract void Resume();

    /// <summary>Which profile an owner runs: the device migration proposal's DEV_MODE_GET (0x7) answers for an SR-IOV member; in the spec profile 0x7 is a self-group command.</summary>
    public static bool IsSeedProfile(OwnerDriver owner, ulong member) =>
        owner.Admin.Execute(SeedOpcode.DevModeGet, SrIov, member, default, 8).Ok;

    protected AdminReply Run(ushort opcode, ushort group, ReadOnlySpan<byte> data, int result = 64, string? what = null)
    {
        var reply = Owner.Admin.Execute(opcode, group, group == Self ? 0 : Member, data, result);
        if (!reply.Ok)
            throw new FrontEndException($"member {Member}: {what ?? $"opcode 0x{opcode:x}"} failed: {reply.Describe()}");
        return reply;
    }
}

/// <summary>The member the state is read from; it writes the stream into a pipe, waiting whenever the reader falls behind.</summary>
public abstract class MemberStateSource(OwnerDriver owner, ulong member) : MemberStateChannel(owner, member)
{
    /// <summary>Writes the whole stream into <paramref name="writer"/> and completes it (with the error, if one ends it).</summary>
    public async Task PumpAsync(PipeWriter writer, Action<long> progress, CancellationToken cancel)
    {
        try
        {
            long total = 0;
            foreach (var chunk in Chunks())
            {
                writer.Write(chunk.Span);
                total += chunk.Length;
                progress(total);
                // Back-pressure: past the pipe's pause threshold this waits for the destination.
                var flushed = await writer.FlushAsync(cancel).ConfigureAwait(false);
                if (flushed.IsCompleted)
                    break; // the reader gave up; its error is what the caller reports
            }
            await writer.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            await writer.CompleteAsync(e).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The stream, piece by piece, as the admin commands return it.</summary>
    protected abstract IEnumerable<ReadOnlyMemory<byte>> Chunks();

    public static MemberStateSource For(OwnerDriver owner, ulong member) =>
        IsSeedProfile(owner, member) ? new SeedSource(owner, member) : new PartsSource(owner, member);

    /// <summary>Seed profile: Freeze, then DEV_CTX_READ until it returns no data (reading consumes the context).</summary>
    private sealed class SeedSource(OwnerDriver owner, ulong member) : MemberStateSource(owner, member)
    {
        public override string Profile => "seed (DEV_CTX_READ)";
        public override void Stop() => Run(SeedOpcode.DevModeSet, SrIov, [(byte)SeedMode.Freeze], 0, "DEV_MODE_SET Freeze");
        public override void Resume()
        {
            Owner.Admin.Execute(SeedOpcode.DevCtxDiscard, SrIov, Member, default, 0); // DEV_CTX_DISCARD: no half-read context stays behind
            Run(SeedOpcode.DevModeSet, SrIov, [(byte)SeedMode.Active], 0, "DEV_MODE_SET Active");
        }

        protected override IEnumerable<ReadOnlyMemory<byte>> Chunks()
        {
            while (true)
            {
                var r = Run(SeedOpcode.DevCtxRead, SrIov, default, 4 + ChunkSize, "DEV_CTX_READ");
                int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(r.Result);
                if (length == 0)
                    yield break;
                if (length > r.Result.Length - 4)
                    throw new FrontEndException($"member {Member}: DEV_CTX_READ claims {length} bytes in a {r.Result.Length}-byte result");
                yield return r.Result.AsMemory(4, length);
            }
        }
    }

    /// <summary>
    /// VIRTIO 1.4 profile, as Linux's virtio-vfio-pci does it (virtio-admin.md §9.4): limits set, a GET
    /// object, DEV_MODE_SET stop, METADATA_GET LIST, then DEV_PARTS_GET SELECTED for as many parts as a
    /// chunk holds, so the stream leaves part by part; the object is destroyed at the end.
    /// </summary>
    private sealed class PartsSource(OwnerDriver owner, ulong member) : MemberStateSource(owner, member)
    {
        private uint? _object;

        public override string Profile => "VIRTIO 1.4 (DEV_PARTS_GET)";
        public override void Stop()
        {
            _object = PartsObjects.Create(this, kind: 0);
            Run((ushort)AdminOpcode.DevModeSet, SrIov, [1], 0, "DEV_MODE_SET stop");
        }

        public override void Resume()
        {
            PartsObjects.Destroy(this, ref _object);
            Run((ushort)AdminOpcode.DevModeSet, SrIov, [0], 0, "DEV_MODE_SET resume");
        }

        protected override IEnumerable<ReadOnlyMemory<byte>> Chunks()
        {
            uint id = _object ?? throw new InvalidOperationException("not stopped");
            var count = Run((ushort)AdminOpcode.DevPartsMetadataGet, SrIov, PartsObjects.Typed(id, 1), 8, "DEV_PARTS_METADATA_GET COUNT");
            int parts = (int)BinaryPrimitives.ReadUInt32LittleEndian(count.Result);
            var list = Run((ushort)AdminOpcode.DevPartsMetadataGet, SrIov, PartsObjects.Typed(id, 2), 8 + 16 * parts, "DEV_PARTS_METADATA_GET LIST");
            var headers = list.Result.AsMemory(8);
            if (headers.Length < 16 * parts)
                throw new FrontEndException($"member {Member}: METADATA_GET LIST returned {headers.Length / 16} of {parts} part headers");
            int at = 0;
            while (at < parts)
            {
                // As many parts as fit a chunk (at least one, whatever its size).
                int first = at, bytes = 0;
                do
                {
                    bytes += 16 + (int)BinaryPrimitives.ReadUInt32LittleEndian(headers.Span.Slice(16 * at + 12));
                    at++;
                }
                while (at < parts && bytes + 16 + (int)BinaryPrimitives.ReadUInt32LittleEndian(headers.Span.Slice(16 * at + 12)) <= ChunkSize);
                byte[] data = [.. PartsObjects.Typed(id, 0), .. headers.Span.Slice(16 * first, 16 * (at - first))];
                var r = Run((ushort)AdminOpcode.DevPartsGet, SrIov, data, bytes, "DEV_PARTS_GET SELECTED");
                if (r.Result.Length != bytes)
                    throw new FrontEndException($"member {Member}: DEV_PARTS_GET returned {r.Result.Length} bytes for parts of {bytes}");
                yield return r.Result;
            }
        }
    }
}

/// <summary>The member the state is written to; it reads the stream from a pipe.</summary>
public abstract class MemberStateSink(OwnerDriver owner, ulong member) : MemberStateChannel(owner, member)
{
    /// <summary>Reads the pipe to its end, handing the stream to the member as it comes.</summary>
    public async Task ConsumeAsync(PipeReader reader, CancellationToken cancel)
    {
        try
        {
            while (true)
            {
                var read = await reader.ReadAsync(cancel).ConfigureAwait(false);
                var buffer = read.Buffer;
                while (buffer.Length >= ChunkSize || (read.IsCompleted && buffer.Length > 0))
                {
                    var piece = buffer.Slice(0, Math.Min(buffer.Length, ChunkSize));
                    Accept(piece);
                    buffer = buffer.Slice(piece.End);
                }
                reader.AdvanceTo(buffer.Start, buffer.End);
                if (read.IsCompleted)
                    break;
            }
            await reader.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            await reader.CompleteAsync(e).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>One piece of the stream, at most <see cref="ChunkSize"/> bytes.</summary>
    protected abstract void Accept(in ReadOnlySequence<byte> piece);

    /// <summary>The stream is complete: the member checks it as a whole and takes it, or refuses it and keeps its state.</summary>
    public abstract void Commit();

    /// <summary>Throws away what was written and resumes the member as it was.</summary>
    public abstract void Abort();

    public static MemberStateSink For(OwnerDriver owner, ulong member) =>
        IsSeedProfile(owner, member) ? new SeedSink(owner, member) : new PartsSink(owner, member);

    /// <summary>Seed profile: Freeze, DEV_CTX_WRITE per piece; leaving Freeze for Stop applies the context.</summary>
    private sealed class SeedSink(OwnerDriver owner, ulong member) : MemberStateSink(owner, member)
    {
        private readonly byte[] _piece = new byte[ChunkSize];

        public override string Profile => "seed (DEV_CTX_WRITE)";
        public override void Stop() => Run(SeedOpcode.DevModeSet, SrIov, [(byte)SeedMode.Freeze], 0, "DEV_MODE_SET Freeze");
        public override void Resume() => Run(SeedOpcode.DevModeSet, SrIov, [(byte)SeedMode.Active], 0, "DEV_MODE_SET Active");

        protected override void Accept(in ReadOnlySequence<byte> piece)
        {
            piece.CopyTo(_piece);
            Run(SeedOpcode.DevCtxWrite, SrIov, _piece.AsSpan(0, (int)piece.Length), 0, "DEV_CTX_WRITE");
        }

        public override void Commit() => Run(SeedOpcode.DevModeSet, SrIov, [(byte)SeedMode.Stop], 0, "DEV_MODE_SET Stop (applying the written context)");

        public override void Abort()
        {
            Owner.Admin.Execute(SeedOpcode.DevCtxDiscard, SrIov, Member, default, 0); // DEV_CTX_DISCARD
            Resume();
        }
    }

    /// <summary>
    /// VIRTIO 1.4 profile: DEV_PARTS_SET takes the whole stream in one command (the device checks it as
    /// a whole), so the pieces are gathered in a <see cref="Sequence{T}"/> until the pipe ends.
    /// </summary>
    private sealed class PartsSink(OwnerDriver owner, ulong member) : MemberStateSink(owner, member)
    {
        private readonly Sequence<byte> _stream = new(ArrayPool<byte>.Shared);
        private uint? _object;

        public override string Profile => "VIRTIO 1.4 (DEV_PARTS_SET)";
        public override void Stop()
        {
            _object = PartsObjects.Create(this, kind: 1);
            Run((ushort)AdminOpcode.DevModeSet, SrIov, [1], 0, "DEV_MODE_SET stop");
        }

        public override void Resume()
        {
            PartsObjects.Destroy(this, ref _object);
            _stream.Reset();
            Run((ushort)AdminOpcode.DevModeSet, SrIov, [0], 0, "DEV_MODE_SET resume");
        }

        protected override void Accept(in ReadOnlySequence<byte> piece)
        {
            foreach (var segment in piece)
                _stream.Write(segment.Span);
        }

        public override void Commit()
        {
            uint id = _object ?? throw new InvalidOperationException("not stopped");
            byte[] data = [.. PartsObjects.Header(id), .. _stream.AsReadOnlySequence.ToArray()];
            Run((ushort)AdminOpcode.DevPartsSet, SrIov, data, 0, $"DEV_PARTS_SET of {_stream.Length} bytes");
        }

        public override void Abort() => Resume();
    }
}

/// <summary>The device parts resource objects a VIRTIO 1.4 transfer needs (virtio-admin.md §4.4, §9.4).</summary>
internal static class PartsObjects
{
    private const ushort SrIov = (ushort)AdminGroupType.SrIov, Self = (ushort)AdminGroupType.Self;

    /// <summary>{le16 type = 0 (DEV_PARTS); le16 reserved; le32 id}.</summary>
    public static byte[] Header(uint id) => [0, 0, 0, 0, (byte)id, (byte)(id >> 8), (byte)(id >> 16), (byte)(id >> 24)];

    /// <summary>Header, then {u8 type; u8 reserved[7]} (METADATA_GET type, GET selected/all).</summary>
    public static byte[] Typed(uint id, byte type) => [.. Header(id), type, 0, 0, 0, 0, 0, 0, 0];

    /// <summary>
    /// Creates a GET (kind 0) or SET (kind 1) object for the channel's member, first raising the
    /// driver's limits to what the device offers (an unset limit is 0), and trying ids until one is free.
    /// </summary>
    public static uint Create(MemberStateChannel channel, byte kind)
    {
        var admin = channel.Owner.Admin;
        var cap = admin.Execute((ushort)AdminOpcode.DeviceCapGet, Self, 0, new byte[8], 64);
        if (!cap.Ok || cap.Result.Length < 2)
            throw new FrontEndException($"DEVICE_CAP_GET of VIRTIO_DEV_PARTS_CAP failed: {cap.Describe()}");
        var set = admin.Execute((ushort)AdminOpcode.DriverCapSet, Self, 0, [0, 0, 0, 0, 0, 0, 0, 0, cap.Result[0], cap.Result[1]], 0);
        if (!set.Ok)
            throw new FrontEndException($"DRIVER_CAP_SET of VIRTIO_DEV_PARTS_CAP failed: {set.Describe()}");
        // Ids are below the sum of the limits; taken from the top, clear of the low ids a hypervisor's driver takes first.
        int ids = cap.Result[0] + cap.Result[1];
        for (uint id = (uint)ids; id-- > 0;)
        {
            byte[] data = [.. Header(id), 0, 0, 0, 0, 0, 0, 0, 0, kind, 0, 0, 0, 0, 0, 0, 0];
            var r = admin.Execute((ushort)AdminOpcode.ResourceObjCreate, SrIov, channel.Member, data, 0);
            if (r.Ok)
                return id;
            if (r.Status != (ushort)AdminStatus.Eexist)
                throw new FrontEndException($"member {channel.Member}: creating a device parts {(kind == 0 ? "GET" : "SET")} object failed: {r.Describe()}");
        }
        throw new FrontEndException($"member {channel.Member}: all {ids} device parts object ids are taken");
    }

    public static void Destroy(MemberStateChannel channel, ref uint? id)
    {
        if (id is { } existing)
            channel.Owner.Admin.Execute((ushort)AdminOpcode.ResourceObjDestroy, SrIov, channel.Member, Header(existing), 0);
        id = null;
    }
}
