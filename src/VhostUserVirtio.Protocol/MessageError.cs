namespace VhostUserVirtio.Protocol;

/// <summary>Why a front end's message was refused, as a kind callers and tests can match.</summary>
public enum MessageErrorKind
{
    /// <summary>A request code this back end does not know or implement.</summary>
    UnknownRequest,
    /// <summary>The payload size does not fit the request.</summary>
    MalformedPayload,
    /// <summary>The request came with the wrong number of descriptors.</summary>
    WrongDescriptorCount,
    /// <summary>A descriptor of the wrong kind (a kick that is not an eventfd, memory that cannot be sealed...).</summary>
    BadDescriptor,
    /// <summary>The protocol feature that gates the request was not negotiated.</summary>
    NotNegotiated,
    /// <summary>A queue index beyond the device's queues.</summary>
    IndexOutOfRange,
    /// <summary>A value the device cannot take (size, flags, features never offered, config range...).</summary>
    InvalidValue,
    /// <summary>Not now: a running ring, a device the group owner drives, features changed mid-run...</summary>
    InvalidState,
    /// <summary>A memory region or table that cannot be mapped or used.</summary>
    BadMemory,
    /// <summary>
    /// The data path did not confirm the request within its deadline (the worker is reported stuck).
    /// What the control loop had already recorded (a new memory table) takes effect if the worker
    /// recovers; nothing is unmapped under it meanwhile.
    /// </summary>
    WorkerStuck,
    /// <summary>An unexpected failure inside the back end (a bug; logged with its stack trace).</summary>
    Internal,
    /// <summary>The byte stream itself is broken (version, flags, size, descriptors): the connection is dropped.</summary>
    CorruptStream,
}

/// <summary>A refused message: the kind to match on and the detail for the log.</summary>
public readonly record struct MessageError(MessageErrorKind Kind, string Detail)
{
    public override string ToString() => Detail;
}
