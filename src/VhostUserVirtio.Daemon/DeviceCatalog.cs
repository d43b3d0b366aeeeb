using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Echo;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// The one place that knows which devices the daemon serves. Today: echo test devices; the
/// virtio-net PF/VF group replaces them here (creation, capability type, status text).
/// </summary>
internal static class DeviceCatalog
{
    /// <summary>The "type" of the vhost-user.json capability document.</summary>
    public const string CapabilityType = "echo";

    /// <summary>The "features" of the capability document (optional per-type features; none for echo).</summary>
    public static IReadOnlyList<string> CapabilityFeatures { get; } = [];

    public static IVirtioDevice Create(int index, int queues) => new EchoDevice($"echo{index}", queues);

    /// <summary>Socket file name of a device in --socket-dir.</summary>
    public static string SocketFileName(IVirtioDevice device) => device.Name + ".sock";

    /// <summary>Device-specific part of the status line.</summary>
    public static string Describe(IVirtioDevice device) =>
        device is EchoDevice echo ? $"chains={echo.ChainsEchoed}" : "";
}
