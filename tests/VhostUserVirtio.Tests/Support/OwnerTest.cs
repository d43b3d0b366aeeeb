using System.Buffers.Binary;
using VhostUserVirtio.Devices.Net;
using VhostUserVirtio.Devices.Switch;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests.Support;

/// <summary>A device group with two VFs and the owner driver connected to its PF (optionally with every command in use).</summary>
public abstract class OwnerTest : IDisposable
{
    protected readonly GroupBackend _backend = new(vfs: 2);
    protected OwnerDriver _owner; // a test may reconnect as a new owner driver

    protected OwnerTest(bool useAllCommands)
    {
        try
        {
            _owner = OwnerDriver.Connect(_backend.Socket(0));
            if (useAllCommands)
                _owner.UseAllCommands();
        }
        catch
        {
            _owner?.Dispose();
            _backend.Dispose(); // xunit does not dispose a test class whose constructor failed
            throw;
        }
    }

    public void Dispose()
    {
        _owner.Dispose();
        _backend.Dispose();
        GC.SuppressFinalize(this);
    }
}
