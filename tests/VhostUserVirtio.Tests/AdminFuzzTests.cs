using System.Buffers.Binary;
using CsCheck;
using VhostUserVirtio.FrontEnd;
using VhostUserVirtio.FrontEnd.Owner;
using VhostUserVirtio.Protocol;
using VhostUserVirtio.Tests.Support;

namespace VhostUserVirtio.Tests;

/// <summary>
/// Hostile owner-driver input through a real admin queue: random opcodes, group types, member ids,
/// legacy offsets, lengths and values (including queue addresses and notifies that point the VF's
/// rings at whatever is in its memory). Every command must complete with a status, the process must
/// survive, and the group must keep switching frames for the members nobody fuzzed.
/// </summary>
[Trait("tier", "unit")]
public sealed class AdminFuzzTests() : OwnerTest(useAllCommands: true)
{
    private sealed record Command(ushort Opcode, ushort Group, ulong Member, byte[] Data, int ResultRoom);

    private static readonly Gen<ushort> Opcodes = Gen.Frequency(
        (8, Gen.UShort[2, 6]),                 // legacy
        (2, Gen.UShort[0x40, 0x42]),           // seed extensions
        (1, Gen.UShort[0, 1]),
        (1, Gen.UShort));

    private static readonly Gen<byte[]> LegacyData = Gen.Select(
        Gen.Frequency((6, Gen.Byte[0, 24]), (1, Gen.Byte)),
        Gen.Frequency((6, Gen.Int[0, 8]), (1, Gen.Int[9, 40])),
        Gen.Byte.Array[8],
        (offset, length, value) =>
        {
            var d = new byte[8 + length];
            d[0] = offset;
            for (int i = 0; i < length; i++)
                d[8 + i] = value[i % 8];
            // Queue addresses inside the VF's 8 MiB of RAM half of the time, so rings really start on garbage.
            if (offset == 8 && length == 4 && value[0] % 2 == 0)
                BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(8), (uint)(0x10 + value[1] % 0x700));
            return d;
        });

    private static readonly Gen<Command> Commands = Gen.Select(
        Opcodes,
        Gen.Frequency((10, Gen.Const((ushort)1)), (1, Gen.UShort[0, 3])),
        // VF1 and ids that name no VF; never VF2, which must stay undisturbed.
        Gen.Frequency((10, Gen.Const(1UL)), (1, Gen.Const(0UL)), (1, Gen.ULong[3, ulong.MaxValue])),
        Gen.Frequency((4, LegacyData), (1, Gen.Byte.Array[0, 64])),
        Gen.Frequency((4, Gen.Int[0, 8]), (1, Gen.Int[9, 200])),
        // A LIST_USE keeps the list commands in use: one that clears them (an empty bitmap reads as
        // all zeros) locks the driver out of them until a reset, which is tested on its own; this
        // test re-uses everything between batches.
        (op, group, member, data, room) => new Command(op, group, member, op == (ushort)AdminOpcode.ListUse ? KeepListCommands(data) : data, room));

    private static byte[] KeepListCommands(byte[] data)
    {
        var d = data.Length > 0 ? (byte[])data.Clone() : new byte[1];
        d[0] |= 0b11;
        return d;
    }

    [Fact]
    public void Random_admin_commands_and_legacy_accesses_always_complete_and_never_disturb_other_members()
    {
        // VF1 has a legacy driver's VMM side attached (memory, call and kick descriptors), so random
        // queue addresses and notifies make the device walk rings in real memory.
        using var legacy = LegacyNetDriver.Start(_owner.Admin, 1, _backend.Socket(1));
        int failures = 0, total = 0;
        Commands.Array[1, 40].Sample(batch =>
        {
            _owner.UseAllCommands(); // a random LIST_USE in the last batch may have narrowed the in-use list
            foreach (var c in batch)
            {
                var r = _owner.Admin.Execute(c.Opcode, c.Group, c.Member, c.Data, c.ResultRoom);
                total++;
                if (!r.Ok)
                {
                    failures++;
                    Assert.NotEqual(0, r.Qualifier); // a failure always says why
                }
                Assert.True(r.UsedLength >= 8 && r.UsedLength <= 8 + (uint)c.ResultRoom, $"used length {r.UsedLength} for {c}");
            }
        }, iter: 400, threads: 1);

        Assert.True(total > 400 && failures > 0 && failures < total, $"{failures} of {total} failed: the generator is not exercising both paths");
        // The owner still answers, VF2 still switches, and VF1 can be reset and driven again.
        _owner.UseAllCommands();
        NetCheck.AssertDeviceUp(_backend.Socket(2));
        var vf1 = new LegacyAccess(_owner.Admin, 1);
        vf1.WriteCommon(LegacyLayout.DeviceStatus, 1, 0);
        Assert.Equal(0u, vf1.ReadCommon(LegacyLayout.DeviceStatus, 1));
    }
}
