using System.Buffers.Binary;
using System.Text;
using VhostUserVirtio.Group.Admin;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Fuzz;

/// <summary>
/// Admin virtqueue commands through the real parser and processor of a device group with VFs: each
/// command is placed in guest memory as the owner's driver would (split over readable buffers, with
/// any result room) and handled on the group's worker. The owner is reset before each input, so an
/// input means the same wherever it runs.
///
/// Input: commands, each a shape byte (how the chain is split), the result room (u16), the request
/// length (u16) and the request (opcode, group type, reserved, member id, data).
/// </summary>
public static class AdminTarget
{
    private const int MemberSocketTakeOver = 1;

    public static void Run(ReadOnlySpan<byte> data)
    {
        var rig = GroupRig.Instance;
        var chains = GroupRig.Chains;
        rig.OnDataPath(() => { rig.Owner.Reset(); return true; });
        var input = new FuzzInput(data);
        var request = new byte[CommandChains.MaxRequest];
        while (!input.IsEmpty)
        {
            byte shape = input.Byte();
            int room = input.U16() % CommandChains.MaxRoom;
            var bytes = input.Take(input.U16() % CommandChains.MaxRequest);
            bytes.CopyTo(request);
            int length = Confine(request, bytes.Length, rig.Directory);
            var chain = chains.Build(request.AsSpan(0, length), room, shape);
            uint writable = chain.WritableLength;
            uint used = rig.OnDataPath(() => rig.Owner.Admin.Handle(chain));
            if (length >= 2 && BinaryPrimitives.ReadUInt16LittleEndian(request) == (ushort)AdminOpcode.MemberSocket)
                rig.Settle(); // a member's socket moves on the control loop
            FuzzInvariantException.Check(used <= writable, $"admin command wrote {used} bytes into {writable}");
            FuzzInvariantException.Check(used >= Math.Min(writable, 8u), $"admin command wrote {used} bytes of its 8-byte status into {writable}");
        }
        FormattingLoggerProvider.ThrowIfUnexpected();
    }

    /// <summary>
    /// MEMBER_SOCKET TAKE_OVER makes a VF listen on any path the command names: the harness points it
    /// into the rig's own folder, so fuzzing never creates or replaces sockets elsewhere.
    /// </summary>
    private static int Confine(byte[] request, int length, string directory)
    {
        const int Data = AdminLayout.HeaderSize;
        if (length <= Data || BinaryPrimitives.ReadUInt16LittleEndian(request) != (ushort)AdminOpcode.MemberSocket ||
            request[Data] != MemberSocketTakeOver || length <= Data + 8)
            return length;
        var path = Encoding.UTF8.GetBytes($"{directory}/takeover-{request[Data + 8] % 4}.sock");
        path.CopyTo(request, Data + 8);
        return Data + 8 + path.Length;
    }
}
