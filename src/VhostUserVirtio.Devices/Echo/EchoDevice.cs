using System.Buffers.Binary;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Queue;

namespace VhostUserVirtio.Devices.Echo;

/// <summary>
/// A loopback test device: every chain's readable bytes are copied into its own writable part, and
/// the used length is the number of bytes copied. Each queue works on its own. It exercises the whole
/// path (rings, chains, memory, notifications) without any device semantics, for tests and benchmarks.
///
/// Config space (8 bytes, little-endian): u32 chains echoed (read-only, all queues), u32 scratch
/// (read-write), so config reads and writes can be checked too.
/// </summary>
public sealed class EchoDevice : IVirtioDevice
{
    public const int ConfigLength = 8;

    private long _echoed;
    private uint _scratch;

    public EchoDevice(string name, int queueCount = 2, int maxQueueSize = 1024)
    {
        Name = name;
        QueueCount = queueCount;
        MaxQueueSize = maxQueueSize;
    }

    public string Name { get; }
    public int QueueCount { get; }
    public int MaxQueueSize { get; }
    public int ConfigSize => ConfigLength;

    public ulong Features =>
        VirtioFeature.Mask(VirtioFeature.Version1) |
        VirtioFeature.Mask(VirtioFeature.RingIndirectDesc) |
        VirtioFeature.Mask(VirtioFeature.RingEventIdx);

    public ProtocolFeatures ExtraProtocolFeatures => ProtocolFeatures.None;

    /// <summary>Chains echoed since the last reset, over all queues.</summary>
    public long ChainsEchoed => Interlocked.Read(ref _echoed);

    public void ReadConfig(int offset, Span<byte> data)
    {
        Span<byte> config = stackalloc byte[ConfigLength];
        BinaryPrimitives.WriteUInt32LittleEndian(config, (uint)ChainsEchoed);
        BinaryPrimitives.WriteUInt32LittleEndian(config[4..], _scratch);
        config.Slice(offset, data.Length).CopyTo(data);
    }

    public bool WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
        if (offset < 4)
            return false;
        Span<byte> scratch = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(scratch, _scratch);
        data.CopyTo(scratch[(offset - 4)..]);
        _scratch = BinaryPrimitives.ReadUInt32LittleEndian(scratch);
        return true;
    }

    public void SetDriverFeatures(ulong features) { }

    public void QueueStarted(DeviceQueue queue) { }

    public void QueueStopped(DeviceQueue queue) { }

    public void ProcessQueue(DeviceQueue queue)
    {
        if (!queue.Enabled)
            return; // a disabled ring must not be processed with side effects; buffers wait for enable
        var handler = new EchoHandler(this);
        queue.Drain(ref handler);
    }

    public void Reset()
    {
        Interlocked.Exchange(ref _echoed, 0);
        _scratch = 0;
    }

    /// <summary>The echo itself: readable bytes copied straight into the writable bytes, no buffer between.</summary>
    public readonly struct EchoHandler(EchoDevice? device) : IChainHandler
    {
        public uint Handle(DescriptorChain chain)
        {
            var reader = chain.Reader();
            var writer = chain.Writer();
            writer.CopyFrom(ref reader);
            if (device != null)
                Interlocked.Increment(ref device._echoed);
            return writer.Written;
        }
    }
}
