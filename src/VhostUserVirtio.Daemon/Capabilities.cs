using System.Text.Json;

namespace VhostUserVirtio.Daemon;

/// <summary>
/// The capability document `--print-capabilities` prints ("Backend program conventions"): a
/// VHostUserBackendCapabilities of QEMU's docs/interop/vhost-user.json. That union adds members
/// (a "features" list) only for the input and gpu types; for "net" it has the "type" alone, so
/// nothing else is printed (a consumer validating against the schema would refuse more).
/// </summary>
internal static class Capabilities
{
    public static string Document()
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("type", DeviceCatalog.CapabilityType);
            json.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
