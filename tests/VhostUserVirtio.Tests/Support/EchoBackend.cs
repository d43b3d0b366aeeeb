using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend;
using VhostUserVirtio.Devices.Echo;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// A back end serving echo devices on sockets in a private temp folder, with captured logs.
/// Disposing stops everything and deletes the folder, even when the test failed.
/// </summary>
public sealed class EchoBackend : IDisposable
{
    public EchoBackend(int devices = 2, int queues = 2, int workers = 1, TimeSpan pollWindow = default)
    {
        Directory = Path.Combine(Path.GetTempPath(), "vuv-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(Directory);
        Logs = new CapturingLoggerProvider();
        Loggers = LoggerFactory.Create(b => b.AddProvider(Logs).SetMinimumLevel(LogLevel.Debug));
        Server = new VhostUserServer(Loggers, workers, pollWindow);
        for (int i = 0; i < devices; i++)
        {
            var device = new EchoDevice($"echo{i}", queues);
            Devices.Add(device);
            Endpoints.Add(Server.Serve(device, SocketPath(i)));
        }
    }

    public string Directory { get; }
    public CapturingLoggerProvider Logs { get; }
    public ILoggerFactory Loggers { get; }
    public VhostUserServer Server { get; }
    public List<EchoDevice> Devices { get; } = new();
    public List<VhostUserEndpoint> Endpoints { get; } = new();

    public string SocketPath(int device) => Path.Combine(Directory, $"echo{device}.sock");

    /// <summary>Waits for a condition on the back end's side (its state changes on its own threads).</summary>
    public static bool WaitUntil(Func<bool> condition, int timeoutMs = 10_000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while (Environment.TickCount64 < deadline)
        {
            if (condition())
                return true;
            Thread.Sleep(5);
        }
        return condition();
    }

    public void Dispose()
    {
        Server.Dispose();
        Loggers.Dispose();
        try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { }
    }
}
