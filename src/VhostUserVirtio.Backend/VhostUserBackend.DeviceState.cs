using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;
using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend;

/// <summary>
/// A device's state as bytes, for front ends that migrate the back end's internal state
/// (VHOST_USER_PROTOCOL_F_DEVICE_STATE). Called on the device's data-path thread, every ring stopped.
/// </summary>
public interface IDeviceStateStore
{
    /// <summary>The state now; null with the reason when it cannot be taken.</summary>
    byte[]? Save(out string? error);

    /// <summary>Applies a state taken by <see cref="Save"/> (here or in another back end); returns why not, and then nothing changed.</summary>
    string? Load(ReadOnlySpan<byte> state);
}

// DEVICE_STATE: SET_DEVICE_STATE_FD hands over a pipe (phase "stopped" only); the back end streams its
// state into it (save) or reads one from it to the end (load); CHECK_DEVICE_STATE then says whether
// it all worked, applying a loaded state. The pipe is the front end's: every read and write on it is
// non-blocking (RWF_NOWAIT) and driven by the control loop's epoll, so a front end that never reads
// or never closes stalls only its own transfer.
public sealed partial class VhostUserBackend
{
    /// <summary>Largest state accepted on load; a longer stream fails the transfer.</summary>
    public const int MaxLoadedState = 1 << 20;

    private StateTransfer? _transfer;
    private readonly LogRateLimit _stateLog = new();

    /// <summary>Where the device's state comes from and goes to; DEVICE_STATE is offered only when set.</summary>
    public IDeviceStateStore? StateStore { get; set; }

    /// <summary>The control loop, on which transfers wait for their pipe (set by the server).</summary>
    internal EventLoop? ControlLoop { get; set; }

    private byte[] SetDeviceStateFd(Message m)
    {
        var request = DeviceStateTransfer.Read(m.Payload);
        var fd = m.TakeFd(0);
        string? refused =
            StateStore == null || ControlLoop == null ? "this device has no state to transfer" :
            request.Phase != DeviceStateTransfer.PhaseStopped ? $"migration phase {request.Phase} is not supported (only 0, stopped)" :
            request.Direction > DeviceStateTransfer.Load ? $"transfer direction {request.Direction} is neither save (0) nor load (1)" :
            _queues.Any(q => q.Started) ? "rings still run: the state is transferred with the device stopped" : null;
        byte[]? state = null;
        if (refused == null && request.Direction == DeviceStateTransfer.Save)
        {
            string? notSaved = null;
            state = OnDataPath(() => StateStore!.Save(out notSaved));
            refused = notSaved;
        }
        CancelTransfer();
        if (refused != null)
        {
            fd.Dispose();
            _logger.LogLimited(_stateLog, LogLevel.Warning, "{Device}: device state transfer refused: {Reason}", _device.Name, refused);
            return BitConverter.GetBytes(1UL | DeviceStateTransfer.NoFdReturned);
        }
        var transfer = new StateTransfer(this, fd, state);
        try
        {
            transfer.Begin();
        }
        catch (NativeException e)
        {
            // epoll refuses descriptors that cannot wait (a regular file): not a pipe-like stream.
            transfer.Dispose();
            _logger.LogLimited(_stateLog, LogLevel.Warning, "{Device}: device state transfer refused: the descriptor cannot be waited on ({Error})",
                _device.Name, e.Message);
            return BitConverter.GetBytes(1UL | DeviceStateTransfer.NoFdReturned);
        }
        _transfer = transfer;
        _logger.LogInformation("{Device}: device state {Direction} started{Size}", _device.Name,
            state != null ? "save" : "load", state != null ? $" ({state.Length} bytes)" : "");
        return BitConverter.GetBytes(DeviceStateTransfer.NoFdReturned);
    }

    private byte[] CheckDeviceState()
    {
        var t = _transfer;
        _transfer = null;
        string? failed = t == null ? "no transfer was started" : t.Finish();
        if (failed == null && t!.Loaded is { } loaded)
            failed = OnDataPath(() => StateStore!.Load(loaded));
        t?.Dispose();
        if (failed != null)
        {
            _logger.LogLimited(_stateLog, LogLevel.Warning, "{Device}: device state transfer failed: {Reason}", _device.Name, failed);
            return BitConverter.GetBytes(1UL);
        }
        _logger.LogInformation("{Device}: device state transfer complete", _device.Name);
        return BitConverter.GetBytes(0UL);
    }

    private void CancelTransfer()
    {
        _transfer?.Dispose();
        _transfer = null;
    }

    /// <summary>One state transfer over the front end's pipe, on the control loop.</summary>
    private sealed class StateTransfer(VhostUserBackend owner, FileDescriptor pipe, byte[]? saving) : IReadyHandler, IDisposable
    {
        private readonly MemoryStream _loading = new();
        private int _written;
        private ulong _token;
        private bool _registered, _ended;
        private string? _error;

        /// <summary>The state read to its end (load), once <see cref="Finish"/> succeeded.</summary>
        public byte[]? Loaded { get; private set; }

        public void Begin()
        {
            Pump();
            if (_ended || _error != null)
                return;
            _token = owner.ControlLoop!.Register(pipe, saving != null ? EpollEvents.Out : EpollEvents.In, this);
            _registered = true;
        }

        public void OnReady(EpollEvents events)
        {
            Pump();
            if ((_ended || _error != null) && _registered)
            {
                owner.ControlLoop!.Unregister(pipe, _token);
                _registered = false;
            }
        }

        /// <summary>Moves as much as the pipe takes or gives now, without waiting.</summary>
        private void Pump()
        {
            if (_ended || _error != null)
                return;
            if (saving != null)
            {
                while (_written < saving.Length)
                {
                    int n = PeerStream.TryWrite(pipe, saving.AsSpan(_written));
                    if (n < 0) { _error = "the front end closed the state pipe before the state was written"; return; }
                    if (n == 0) return;
                    _written += n;
                }
                _ended = true;
                pipe.Dispose(); // end of stream for the reader
                return;
            }
            Span<byte> buffer = stackalloc byte[4096];
            while (true)
            {
                int n = PeerStream.TryRead(pipe, buffer);
                if (n == -2) return;
                if (n < 0) { _error = "reading the state pipe failed"; return; }
                if (n == 0) { _ended = true; return; }
                if (_loading.Length + n > MaxLoadedState) { _error = $"the state is longer than {MaxLoadedState} bytes"; return; }
                _loading.Write(buffer[..n]);
            }
        }

        /// <summary>CHECK_DEVICE_STATE: whether the transfer reached its end; a load takes what is left in the pipe now.</summary>
        public string? Finish()
        {
            Pump();
            if (_error != null)
                return _error;
            if (!_ended)
                return saving != null ? "the front end has not read the whole state" : "the state stream has not ended (the front end still holds the pipe open)";
            if (saving == null)
                Loaded = _loading.ToArray();
            return null;
        }

        public void Dispose()
        {
            if (_registered)
                owner.ControlLoop!.Unregister(pipe, _token);
            _registered = false;
            pipe.Dispose();
        }
    }
}
