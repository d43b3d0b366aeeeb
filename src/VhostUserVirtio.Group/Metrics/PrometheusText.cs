using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text;

namespace VhostUserVirtio.Group.Metrics;

/// <summary>
/// Renders the observable instruments of one meter in Prometheus's text exposition format (0.0.4),
/// read through a MeterListener at each <see cref="Render"/>. Names follow Prometheus's
/// conventions: dots become underscores, a unit of bytes ends the name in <c>_bytes</c>, counters
/// end in <c>_total</c>. Renders are serialized: one listener, one collection at a time.
/// </summary>
public sealed class PrometheusText : IDisposable
{
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    private readonly MeterListener _listener = new();
    private readonly Lock _gate = new();
    // Instruments in the order they were published, each with what the current render measured.
    private readonly List<Instrument> _instruments = [];
    private readonly Dictionary<Instrument, List<(double Value, KeyValuePair<string, object?>[] Tags)>> _measured = [];

    /// <param name="meter">Only this meter's instruments are rendered (the name alone could match another group's meter).</param>
    public PrometheusText(Meter meter)
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter != meter || !instrument.IsObservable)
                return;
            lock (_gate)
            {
                _instruments.Add(instrument);
                _measured[instrument] = [];
            }
            listener.EnableMeasurementEvents(instrument);
        };
        _listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<int>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
        _listener.Start();
    }

    private void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        // Called on the rendering thread, inside Render's lock.
        if (_measured.TryGetValue(instrument, out var list))
            list.Add((value, tags.ToArray()));
    }

    /// <summary>Collects every instrument once and returns the exposition text.</summary>
    public string Render()
    {
        lock (_gate)
        {
            foreach (var list in _measured.Values)
                list.Clear();
            _listener.RecordObservableInstruments();
            var text = new StringBuilder(4096);
            foreach (var instrument in _instruments)
            {
                bool counter = instrument.GetType().IsGenericType && instrument.GetType().GetGenericTypeDefinition() == typeof(ObservableCounter<>);
                string name = Name(instrument, counter);
                if (!string.IsNullOrEmpty(instrument.Description))
                    text.Append("# HELP ").Append(name).Append(' ').Append(EscapeHelp(instrument.Description)).Append('\n');
                text.Append("# TYPE ").Append(name).Append(counter ? " counter\n" : " gauge\n");
                foreach (var (value, tags) in _measured[instrument])
                {
                    text.Append(name);
                    if (tags.Length > 0)
                    {
                        text.Append('{');
                        for (int i = 0; i < tags.Length; i++)
                        {
                            if (i > 0)
                                text.Append(',');
                            text.Append(Sanitize(tags[i].Key)).Append("=\"")
                                .Append(EscapeLabel(Convert.ToString(tags[i].Value, CultureInfo.InvariantCulture) ?? "")).Append('"');
                        }
                        text.Append('}');
                    }
                    text.Append(' ').Append(value.ToString("R", CultureInfo.InvariantCulture)).Append('\n');
                }
            }
            return text.ToString();
        }
    }

    /// <summary>vhost_virtio.port.bytes (unit By, counter) → vhost_virtio_port_bytes_total.</summary>
    internal static string Name(Instrument instrument, bool counter)
    {
        string name = Sanitize(instrument.Name);
        if (instrument.Unit == "By" && !name.EndsWith("_bytes", StringComparison.Ordinal))
            name += "_bytes";
        return counter && !name.EndsWith("_total", StringComparison.Ordinal) ? name + "_total" : name;
    }

    /// <summary>Anything outside [a-zA-Z0-9_] becomes '_' (a leading digit too).</summary>
    internal static string Sanitize(string name)
    {
        var chars = name.ToCharArray();
        for (int i = 0; i < chars.Length; i++)
            if (!(char.IsAsciiLetter(chars[i]) || chars[i] == '_' || (i > 0 && char.IsAsciiDigit(chars[i]))))
                chars[i] = '_';
        return new string(chars);
    }

    private static string EscapeHelp(string text) => text.Replace("\\", "\\\\").Replace("\n", "\\n");

    private static string EscapeLabel(string text) => text.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");

    public void Dispose() => _listener.Dispose();
}
