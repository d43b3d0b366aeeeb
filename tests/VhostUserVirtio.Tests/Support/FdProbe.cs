using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// A descriptor to hand to the back end whose closing can be observed: one end of a socket pair.
/// After <see cref="Release"/> the back end holds the only copy of the sent end; when it closes it,
/// the kept end reads end of stream.
/// </summary>
public sealed class FdProbe : IDisposable
{
    private readonly UnixSocket _kept;
    private UnixSocket? _sent;

    public FdProbe() => (_kept, _sent) = UnixSocket.CreatePair();

    public int Fd => _sent!.Descriptor.Number;

    /// <summary>Drops our copy of the sent end (call after the message carrying it was sent).</summary>
    public void Release()
    {
        _sent?.Dispose();
        _sent = null;
    }

    /// <summary>True when every copy of the sent end has been closed.</summary>
    public bool WaitClosed(int timeoutMs = 10_000)
    {
        if (!_kept.Descriptor.WaitReadable(timeoutMs))
            return false;
        return _kept.Receive(new byte[1], new List<FileDescriptor>(), out _) == 0;
    }

    public void Dispose()
    {
        Release();
        _kept.Dispose();
    }
}
