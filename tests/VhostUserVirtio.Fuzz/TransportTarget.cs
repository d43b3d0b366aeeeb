using System.Buffers.Binary;
using VhostUserVirtio.Group.Transport;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Fuzz;

/// <summary>
/// Transport virtqueue commands through the real parser and processor of the owner's transport
/// queue: managed devices created, configured, queried and destroyed, each command placed in guest
/// memory as the owner's driver would and handled on the group's worker. Device ids in the input
/// 1..<see cref="GroupRig.ManagedDevices"/> name the devices that exist now, in creation order (ids
/// are never reused, so the real ones grow from input to input); every device an input made is
/// destroyed after it through the queue, so the next input starts from none.
///
/// Input: commands, each a shape byte, the result room (u16), the request length (u16) and the
/// request (device id u64, class u16, command u16, data).
/// </summary>
public static class TransportTarget
{
    public static void Run(ReadOnlySpan<byte> data)
    {
        var rig = GroupRig.Instance;
        var transport = rig.Owner.Transport!;
        var input = new FuzzInput(data);
        var request = new byte[CommandChains.MaxRequest];
        try
        {
            while (!input.IsEmpty)
            {
                byte shape = input.Byte();
                int room = input.U16() % CommandChains.MaxRoom;
                var bytes = input.Take(input.U16() % CommandChains.MaxRequest);
                bytes.CopyTo(request);
                if (bytes.Length >= 8)
                {
                    ulong id = BinaryPrimitives.ReadUInt64LittleEndian(request);
                    var devices = transport.Devices;
                    if (id >= 1 && id <= (ulong)devices.Count)
                        BinaryPrimitives.WriteUInt64LittleEndian(request, devices[(int)id - 1].Id);
                }
                Execute(rig, transport, request.AsSpan(0, bytes.Length), room, shape);
            }
        }
        finally
        {
            foreach (var device in transport.Devices.ToArray())
            {
                var destroy = new byte[12];
                BinaryPrimitives.WriteUInt64LittleEndian(destroy, device.Id);
                BinaryPrimitives.WriteUInt16LittleEndian(destroy.AsSpan(8), TransportCommand.DeviceClass);
                BinaryPrimitives.WriteUInt16LittleEndian(destroy.AsSpan(10), TransportCommand.DevDestroy);
                Execute(rig, transport, destroy, 8, shape: 4);
            }
            FuzzInvariantException.Check(transport.Devices.Count == 0, $"{transport.Devices.Count} managed devices left after DEV_DESTROY of each");
            FormattingLoggerProvider.ThrowIfUnexpected();
        }
    }

    private static void Execute(GroupRig rig, TransportQueueProcessor transport, ReadOnlySpan<byte> request, int room, byte shape)
    {
        var chain = GroupRig.Chains.Build(request, room, shape);
        uint writable = chain.WritableLength;
        uint used = rig.OnDataPath(() => transport.Handle(chain));
        if (request.Length >= 12 && BinaryPrimitives.ReadUInt16LittleEndian(request[8..]) == TransportCommand.DeviceClass)
            rig.Settle(); // a device's socket opens or closes on the control loop
        FuzzInvariantException.Check(used <= writable, $"transport command wrote {used} bytes into {writable}");
    }
}
