using Microsoft.Extensions.Logging;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Backend;

/// <summary>Who drives a device's rings and features.</summary>
public enum DeviceDriver
{
    /// <summary>Nobody yet (or since the last reset).</summary>
    None,
    /// <summary>The device's own vhost-user front end (features set or a ring started).</summary>
    FrontEnd,
    /// <summary>The group owner, through a transport (<see cref="IOwnerTransport"/>).</summary>
    Owner,
}

// Which driver has the device. The front end claims it from the control loop, the owner's transports
// from the pinned worker; the claim is one compare-and-swap, so the two can never both win. The ring
// work of an owner-driven device lives with its transport (Group), not here: this side only refuses
// the front end's own ring set-up while the owner drives, keeps its kick descriptors as doorbells,
// and tells the transport when the front end resets or leaves.
public sealed partial class VhostUserBackend
{
    private int _driver;    // DeviceDriver
    private volatile IOwnerTransport? _ownerTransport;

    public DeviceDriver Driver => (DeviceDriver)Volatile.Read(ref _driver);

    /// <summary>The owner's transport that drives the device now, if any.</summary>
    public IOwnerTransport? OwnerTransport => _ownerTransport;

    /// <summary>Whether the owner drives this device now (its front end's ring and feature set-up is refused).</summary>
    public bool OwnerDriven => Driver == DeviceDriver.Owner;

    /// <summary>
    /// The owner takes the device over for <paramref name="transport"/>. Refused (returns why) while
    /// the device's own front end drives it. Call on the pinned worker.
    /// </summary>
    public string? ClaimForOwner(IOwnerTransport transport)
    {
        CheckOnPinnedWorker();
        if (_ownerTransport == transport)
            return null;
        if (_ownerTransport != null)
            return "another owner transport drives the device";
        switch ((DeviceDriver)Interlocked.CompareExchange(ref _driver, (int)DeviceDriver.Owner, (int)DeviceDriver.None))
        {
            case DeviceDriver.None:
                _ownerTransport = transport;
                _logger.LogInformation("{Device}: now driven by the owner", _device.Name);
                return null;
            case DeviceDriver.FrontEnd:
                return "the device's own front end drives it";
            default:
                return "another owner transport drives the device";
        }
    }

    /// <summary>
    /// The owner's transport gives the device back (it stopped its rings first). Call on the pinned
    /// worker. The device's front end is free to drive it again.
    /// </summary>
    public void ReleaseFromOwner(IOwnerTransport transport)
    {
        CheckOnPinnedWorker();
        if (_ownerTransport != transport)
            return;
        _ownerTransport = null;
        Interlocked.CompareExchange(ref _driver, (int)DeviceDriver.None, (int)DeviceDriver.Owner);
        _logger.LogInformation("{Device}: released by the owner", _device.Name);
    }

    /// <summary>The front end drives the device from now on (control loop); false when the owner does.</summary>
    private bool TryDriveFromFrontEnd() =>
        Interlocked.CompareExchange(ref _driver, (int)DeviceDriver.FrontEnd, (int)DeviceDriver.None) != (int)DeviceDriver.Owner;

    private void ReleaseFrontEndDrive() =>
        Interlocked.CompareExchange(ref _driver, (int)DeviceDriver.None, (int)DeviceDriver.FrontEnd);

    private void CheckOnPinnedWorker()
    {
        if (_pinnedWorker == null || !_pinnedWorker.Loop.IsLoopThread)
            throw new InvalidOperationException("owner-driven rings are changed only on the device's pinned worker");
    }

    /// <summary>Front-end requests that change the device's state; refused while the owner has it frozen.</summary>
    private static bool ChangesDeviceState(FrontendRequest request) => request is FrontendRequest.SetFeatures or
        FrontendRequest.SetConfig or FrontendRequest.SetStatus or FrontendRequest.NetSetMtu or
        FrontendRequest.ResetDevice or FrontendRequest.ResetOwner;

    /// <summary>Ring resources a front end hands over; refused when the owner's transport supplies them itself (a managed device).</summary>
    private static bool SuppliesRingResources(FrontendRequest request) => request is FrontendRequest.SetVringKick or
        FrontendRequest.SetVringCall or FrontendRequest.SetVringErr;

    /// <summary>Front-end requests that would drive the device themselves; refused while the owner drives it.</summary>
    private static bool DrivesTheDevice(FrontendRequest request) => request is FrontendRequest.SetFeatures or
        FrontendRequest.SetVringNum or FrontendRequest.SetVringAddr or FrontendRequest.SetVringBase or
        FrontendRequest.GetVringBase or FrontendRequest.SetVringEnable;

    /// <summary>
    /// Whether the group owner stopped this member (DEV_MODE_SET, pinned worker only): its rings are
    /// paused (<see cref="DeviceQueue.Paused"/>), rings its front end starts meanwhile start paused,
    /// and driver notifications wait in their eventfds until the owner resumes it. The stop belongs to
    /// the owner: it outlasts the member's front end resetting or reconnecting.
    /// </summary>
    public bool MemberStopped { get; private set; }

    private volatile bool _memberFrozen;

    /// <summary>
    /// Whether the owner froze the member (seed profile): stopped, and its state does not change, not
    /// even by its own front end's configuration requests (refused while frozen).
    /// </summary>
    public bool MemberFrozen => _memberFrozen;

    /// <summary>Stops or resumes every ring of the member, frozen or not; call on the pinned worker. Idempotent.</summary>
    public void SetMemberStopped(bool stopped, bool frozen = false)
    {
        CheckOnPinnedWorker();
        _memberFrozen = stopped && frozen;
        if (MemberStopped == stopped)
            return;
        MemberStopped = stopped;
        // Each ring pauses on the worker that runs it (or would start it): that worker finishes its
        // burst first, so when this returns no worker touches the member's rings any more. Handed to
        // all of them first, then waited for, so the workers stop in parallel.
        var pending = new List<(Worker, Task<bool>)>();
        foreach (var q in _queues)
        {
            var worker = q.Owner ?? PlacementOf(q.Index);
            bool Apply()
            {
                if (stopped)
                    q.Pause();
                else
                    q.Resume();
                return true;
            }
            if (worker == null || worker.Loop.IsLoopThread)
                Apply();
            else
                pending.Add((worker, worker.Loop.Schedule(Apply)));
        }
        foreach (var (worker, task) in pending)
            worker.Loop.Await(task);
        _logger.LogInformation("{Device}: {What} by the owner", _device.Name, stopped ? "stopped" : "resumed");
    }

    /// <summary>The front end reset the device or left: the owner's transport stops its rings and forgets its state.</summary>
    private void EndOwnerDrive()
    {
        if (_ownerTransport is not { } transport)
            return;
        _pinnedWorker!.Loop.Invoke(() =>
        {
            if (_ownerTransport != transport)
                return;
            transport.FrontEndReset();
            ReleaseFromOwner(transport);
        });
    }
}
