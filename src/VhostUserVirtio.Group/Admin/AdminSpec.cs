using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Group.Admin;

/// <summary>Sizes of the command container (struct virtio_admin_cmd).</summary>
public static class AdminLayout
{
    /// <summary>opcode, group_type, reserved[12], group_member_id.</summary>
    public const int HeaderSize = 24;
    /// <summary>status, status_qualifier, reserved[4].</summary>
    public const int StatusSize = 8;
    /// <summary>Largest command data accepted; more is ignored (the spec's tolerance rule).</summary>
    public const int MaxData = 4096;
    /// <summary>Largest result produced.</summary>
    public const int MaxResult = 4096;
}

/// <summary>The result of one admin command: status, qualifier, and how many result bytes it produced.</summary>
public readonly record struct AdminOutcome(AdminStatus Status, AdminQualifier Qualifier, int ResultLength = 0)
{
    public static AdminOutcome Ok(int resultLength = 0) => new(AdminStatus.Ok, AdminQualifier.Ok, resultLength);
    public static AdminOutcome Invalid(AdminQualifier qualifier) => new(AdminStatus.Einval, qualifier);
}
