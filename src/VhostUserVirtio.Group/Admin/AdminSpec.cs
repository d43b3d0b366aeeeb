using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Group.Admin;

/// <summary>The result of one admin command: status, qualifier, and how many result bytes it produced.</summary>
public readonly record struct AdminOutcome(AdminStatus Status, AdminQualifier Qualifier, int ResultLength = 0)
{
    public static AdminOutcome Ok(int resultLength = 0) => new(AdminStatus.Ok, AdminQualifier.Ok, resultLength);
    public static AdminOutcome Invalid(AdminQualifier qualifier) => new(AdminStatus.Einval, qualifier);
}
