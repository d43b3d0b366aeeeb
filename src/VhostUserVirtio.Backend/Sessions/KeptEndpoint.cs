using Microsoft.Extensions.Logging;
using VhostUserVirtio.Interop;

namespace VhostUserVirtio.Backend.Sessions;

/// <summary>
/// One endpoint's keeping: its listener, its connection, a session record and the descriptors the
/// record names, each kept under "socket-path#name". Order makes it crash-safe: a descriptor is
/// stored before a record names it and dropped only after no record does, and the record flips
/// between two slots, so whenever this process dies the keeper holds a consistent session.
/// </summary>
public sealed class KeptEndpoint
{
    private const string ListenerName = "listen", ConnectionName = "conn", RecordName = "record";

    private readonly SessionKeeper _keeper;
    private readonly string _prefix;
    private readonly ILogger _logger;
    // What the previous process left for this endpoint, until taken.
    private readonly Dictionary<string, FileDescriptor> _left;
    private SessionRecord? _record;
    // Descriptors of the session, by object, and the ids the keeper holds them under.
    private readonly Dictionary<FileDescriptor, uint> _ids = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<uint> _stored = new();
    private uint _nextId = 1;

    internal KeptEndpoint(SessionKeeper keeper, string prefix, Dictionary<string, FileDescriptor> left, ILogger logger)
    {
        _keeper = keeper;
        _prefix = prefix;
        _left = left;
        _logger = logger;
        foreach (var name in left.Keys)
            if (uint.TryParse(name, out uint id))
            {
                _stored.Add(id);
                _nextId = Math.Max(_nextId, id + 1);
            }
    }

    /// <summary>The listener the previous process kept, adopted; null when none was kept.</summary>
    public UnixSocket? TakeListener()
    {
        if (!_left.Remove(ListenerName, out var fd))
            return null;
        try
        {
            return UnixSocket.AdoptListener(fd.Release());
        }
        catch (ArgumentException e)
        {
            _logger.LogWarning("{Endpoint}: the kept listener is unusable ({Error}); listening anew", _prefix, e.Message);
            return null;
        }
    }

    /// <summary>
    /// The connection the previous process kept and its session, if both were kept. The state's
    /// descriptors stay owned here until <see cref="Changed"/> has stored the restored session's own.
    /// </summary>
    public (UnixSocket Connection, SessionState? State, string? Problem)? TakeSession()
    {
        _left.Remove(RecordName, out var recordFd);
        if (recordFd != null)
        {
            try
            {
                _record = SessionRecord.Open(recordFd);
            }
            catch (Exception e) when (e is ArgumentException or NativeException)
            {
                _logger.LogWarning("{Endpoint}: the kept session record is unusable: {Error}", _prefix, e.Message);
                recordFd.Dispose();
            }
        }
        if (!_left.Remove(ConnectionName, out var connectionFd))
            return null;
        UnixSocket connection;
        try
        {
            connection = UnixSocket.AdoptConnected(connectionFd);
        }
        catch (ArgumentException e)
        {
            connectionFd.Dispose();
            _logger.LogWarning("{Endpoint}: the kept connection is unusable: {Error}", _prefix, e.Message);
            return null;
        }
        if (_record == null)
            return (connection, null, "no session record was kept");
        try
        {
            var state = _record.Read(id => _left.GetValueOrDefault(id.ToString()));
            return (connection, state, state == null ? "the session record is empty (the front end had not set anything up)" : null);
        }
        catch (InvalidDataException e)
        {
            return (connection, null, $"the session record does not parse: {e.Message}");
        }
    }

    /// <summary>
    /// Queues the rebuilding of a kept session until every endpoint is up
    /// (<see cref="SessionKeeper.StartRestoredRings"/>), which calls it once per <see cref="RestorePass"/>, in order.
    /// </summary>
    public void Restored(Action<RestorePass> pass) => _keeper.Pending.Add(pass);

    /// <summary>Keeps the listener so the socket path stays served (connections wait in its backlog) while this process restarts.</summary>
    public void Listening(UnixSocket listener) => _keeper.Store(_prefix + ListenerName, listener.Descriptor);

    /// <summary>The listener was closed (handover, release): nothing to keep.</summary>
    public void NotListening() => _keeper.Drop(_prefix + ListenerName);

    /// <summary>
    /// A front end connected: keep the connection and start an empty record. A connection taken back
    /// (<paramref name="resumed"/>) is kept already, and its record stays until the restored session replaces it.
    /// </summary>
    public void Connected(UnixSocket connection, bool resumed)
    {
        if (_record == null)
        {
            _record = SessionRecord.Create("vhost-virtio-session");
            _keeper.Store(_prefix + RecordName, _record.Descriptor);
        }
        if (resumed)
            return;
        _record.Clear();
        _keeper.Store(_prefix + ConnectionName, connection.Descriptor);
    }

    /// <summary>The session changed: store its new descriptors, write the record, drop what it no longer names.</summary>
    public void Changed(SessionState state)
    {
        if (_record == null)
            return;
        var live = new HashSet<uint>();
        foreach (var fd in state.Descriptors())
        {
            if (!_ids.TryGetValue(fd, out uint id))
            {
                id = _nextId++;
                _ids[fd] = id;
            }
            if (_stored.Add(id))
                _keeper.Store(_prefix + id, fd);
            live.Add(id);
        }
        try
        {
            _record.Write(state, fd => _ids[fd]);
        }
        catch (ArgumentOutOfRangeException)
        {
            _record.Write(state with { Regions = [], Queues = [], NotResumable = "the session is larger than a record holds" }, _ => 0);
        }
        DropExcept(live);
        // Objects the session no longer holds are closed: forget them so a reused object is not mistaken for one.
        foreach (var fd in _ids.Keys.Where(fd => !live.Contains(_ids[fd])).ToList())
            _ids.Remove(fd);
        ReleaseLeft();
    }

    /// <summary>The front end is gone: nothing of its session is kept.</summary>
    public void Disconnected()
    {
        _record?.Clear();
        _keeper.Drop(_prefix + ConnectionName);
        DropExcept([]);
        _ids.Clear();
        ReleaseLeft();
    }

    /// <summary>
    /// The endpoint is gone for good (its device removed, or the process stopping): after
    /// <see cref="Disconnected"/> and <see cref="NotListening"/>, only the record is left; close it
    /// here and in the keeper, rather than when the collector gets round to the mapping.
    /// </summary>
    public void Closed()
    {
        if (_record != null)
        {
            _keeper.Drop(_prefix + RecordName);
            _record.Dispose();
            _record = null;
        }
        ReleaseLeft();
    }

    private void DropExcept(HashSet<uint> live)
    {
        foreach (var id in _stored.Where(id => !live.Contains(id)).ToList())
        {
            _keeper.Drop(_prefix + id);
            _stored.Remove(id);
        }
    }

    /// <summary>Closes this process's copies of what the previous one kept: the keeper still holds what is current.</summary>
    private void ReleaseLeft()
    {
        foreach (var fd in _left.Values)
            fd.Dispose();
        _left.Clear();
    }
}
