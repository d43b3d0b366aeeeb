namespace VhostUserVirtio.Protocol;

/// <summary>How many descriptors a request may carry.</summary>
public enum FdRule
{
    /// <summary>No descriptor may come with it.</summary>
    None,
    /// <summary>Exactly one.</summary>
    One,
    /// <summary>One, unless the payload's no-fd bit is set (vring files).</summary>
    VringFile,
    /// <summary>Zero or one; a stray one is accepted and closed (REM_MEM_REG, per the spec).</summary>
    AtMostOne,
    /// <summary>One per memory region named in the payload.</summary>
    PerRegion,
}

/// <summary>
/// What a well-formed front-end request looks like: payload size range, descriptors, whether it always
/// gets a reply body, and the protocol feature that must be negotiated first. One row per request this
/// back end knows; anything else is unknown.
/// </summary>
public readonly record struct RequestRule(int MinSize, int MaxSize, FdRule Fds, bool HasReplyBody, ProtocolFeatures Gate)
{
    public static RequestRule Exact(int size, FdRule fds = FdRule.None, bool reply = false, ProtocolFeatures gate = ProtocolFeatures.None) =>
        new(size, size, fds, reply, gate);
}

public static class MessageRules
{
    private static readonly Dictionary<FrontendRequest, RequestRule> Rules = new()
    {
        [FrontendRequest.GetFeatures] = RequestRule.Exact(0, reply: true),
        [FrontendRequest.SetFeatures] = RequestRule.Exact(8),
        [FrontendRequest.SetOwner] = RequestRule.Exact(0),
        [FrontendRequest.ResetOwner] = RequestRule.Exact(0),
        [FrontendRequest.SetMemTable] = new(MemoryTablePayload.SizeFor(1), MemoryTablePayload.SizeFor(MessageHeader.MaxFds), FdRule.PerRegion, false, ProtocolFeatures.None),
        // The u64 reply is awaited only with LOG_SHMFD, the only form accepted (without it the
        // "log" would be an address in the front end's own process).
        [FrontendRequest.SetLogBase] = RequestRule.Exact(LogPayload.Size, FdRule.One, reply: true, gate: ProtocolFeatures.LogShmfd),
        [FrontendRequest.SetVringNum] = RequestRule.Exact(VringState.Size),
        [FrontendRequest.SetVringAddr] = RequestRule.Exact(VringAddress.Size),
        [FrontendRequest.SetVringBase] = RequestRule.Exact(VringState.Size),
        [FrontendRequest.GetVringBase] = RequestRule.Exact(VringState.Size, reply: true),
        [FrontendRequest.SetVringKick] = RequestRule.Exact(8, FdRule.VringFile),
        [FrontendRequest.SetVringCall] = RequestRule.Exact(8, FdRule.VringFile),
        [FrontendRequest.SetVringErr] = RequestRule.Exact(8, FdRule.VringFile),
        [FrontendRequest.GetProtocolFeatures] = RequestRule.Exact(0, reply: true),
        [FrontendRequest.SetProtocolFeatures] = RequestRule.Exact(8),
        [FrontendRequest.GetQueueNum] = RequestRule.Exact(0, reply: true, gate: ProtocolFeatures.Mq),
        [FrontendRequest.SetVringEnable] = RequestRule.Exact(VringState.Size),
        [FrontendRequest.SendRarp] = RequestRule.Exact(8, gate: ProtocolFeatures.Rarp),
        [FrontendRequest.NetSetMtu] = RequestRule.Exact(8, gate: ProtocolFeatures.NetMtu),
        [FrontendRequest.GetConfig] = new(ConfigHeader.Length, ConfigHeader.Length + ConfigHeader.MaxData, FdRule.None, true, ProtocolFeatures.Config),
        [FrontendRequest.SetConfig] = new(ConfigHeader.Length, ConfigHeader.Length + ConfigHeader.MaxData, FdRule.None, false, ProtocolFeatures.Config),
        [FrontendRequest.ResetDevice] = RequestRule.Exact(0, gate: ProtocolFeatures.ResetDevice),
        [FrontendRequest.GetMaxMemSlots] = RequestRule.Exact(0, reply: true, gate: ProtocolFeatures.ConfigureMemSlots),
        [FrontendRequest.AddMemReg] = RequestRule.Exact(SingleRegionPayload.Size, FdRule.One, gate: ProtocolFeatures.ConfigureMemSlots),
        [FrontendRequest.RemMemReg] = RequestRule.Exact(SingleRegionPayload.Size, FdRule.AtMostOne, gate: ProtocolFeatures.ConfigureMemSlots),
        [FrontendRequest.SetStatus] = RequestRule.Exact(8, gate: ProtocolFeatures.Status),
        [FrontendRequest.GetStatus] = RequestRule.Exact(0, reply: true, gate: ProtocolFeatures.Status),
        [FrontendRequest.SetDeviceStateFd] = RequestRule.Exact(DeviceStateTransfer.Size, FdRule.One, reply: true, gate: ProtocolFeatures.DeviceState),
        [FrontendRequest.CheckDeviceState] = RequestRule.Exact(0, reply: true, gate: ProtocolFeatures.DeviceState),
        // The GET reply carries the buffer's descriptor; SET hands one (back) over.
        [FrontendRequest.GetInflightFd] = RequestRule.Exact(InflightPayload.Size, reply: true, gate: ProtocolFeatures.InflightShmfd),
        [FrontendRequest.SetInflightFd] = RequestRule.Exact(InflightPayload.Size, FdRule.One, gate: ProtocolFeatures.InflightShmfd),
    };

    public static bool TryGet(FrontendRequest request, out RequestRule rule) => Rules.TryGetValue(request, out rule);

    /// <summary>
    /// Checks size and descriptor count of a request against its rule. Returns null when the message is
    /// well formed, otherwise why not. Protocol-feature gating is the caller's (it knows what was negotiated).
    /// </summary>
    public static MessageError? Validate(FrontendRequest request, in RequestRule rule, ReadOnlySpan<byte> payload, int fdCount)
    {
        if (payload.Length < rule.MinSize || payload.Length > rule.MaxSize)
            return new(MessageErrorKind.MalformedPayload, rule.MinSize == rule.MaxSize
                ? $"payload is {payload.Length} bytes, {request} takes {rule.MinSize}"
                : $"payload is {payload.Length} bytes, {request} takes {rule.MinSize}..{rule.MaxSize}");

        int expectedFds;
        switch (rule.Fds)
        {
            case FdRule.None: expectedFds = 0; break;
            case FdRule.One: expectedFds = 1; break;
            case FdRule.AtMostOne:
                return fdCount <= 1 ? null : new(MessageErrorKind.WrongDescriptorCount, $"{fdCount} descriptors attached, {request} takes at most 1");
            case FdRule.VringFile:
                ulong value = BitConverter.ToUInt64(payload);
                expectedFds = (value & VringFile.NoFdFlag) != 0 ? 0 : 1;
                break;
            case FdRule.PerRegion:
                expectedFds = (int)Math.Min(BitConverter.ToUInt32(payload), int.MaxValue);
                break;
            default: expectedFds = 0; break;
        }
        return fdCount == expectedFds ? null : new(MessageErrorKind.WrongDescriptorCount, $"{fdCount} descriptors attached, {request} takes {expectedFds}");
    }
}
