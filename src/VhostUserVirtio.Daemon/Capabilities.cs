using System.Text.Json;

namespace VhostUserVirtio.Daemon;

/// <summary>The JSON capability document of vhost-user.json ("Backend program conventions").</summary>
internal static class Capabilities
{
    public static string Document()
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("type", DeviceCatalog.CapabilityType);
            json.WriteStartArray("features");
            foreach (var feature in DeviceCatalog.CapabilityFeatures)
                json.WriteStringValue(feature);
            json.WriteEndArray();
            json.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
