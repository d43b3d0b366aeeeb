using System.Text;

namespace VhostUserVirtio.Tests.Support;

/// <summary>
/// Writes a "newc" cpio archive (the initramfs format). Used to add files such as /test.sh to the
/// cached base initramfs: the kernel unpacks archives concatenated after one another, later files
/// overriding earlier ones, so a test never has to rebuild the base image.
/// </summary>
public static class Cpio
{
    private const int RegularFile = 0x8000; // S_IFREG
    private const int Directory = 0x4000;   // S_IFDIR

    /// <summary>An archive holding <paramref name="files"/> (absolute guest paths), with parent folders.</summary>
    public static byte[] Create(IEnumerable<(string Path, byte[] Content, int Mode)> files)
    {
        using var stream = new MemoryStream();
        var directories = new HashSet<string>(StringComparer.Ordinal);
        var ino = 1;
        foreach (var (path, content, mode) in files)
        {
            var name = path.TrimStart('/');
            if (name.Length == 0 || name.Split('/').Any(part => part is "" or "." or ".."))
                throw new ArgumentException($"bad guest path '{path}'", nameof(files));
            // Parent folders first: the kernel does not create them for a file.
            var slash = -1;
            while ((slash = name.IndexOf('/', slash + 1)) >= 0)
            {
                var dir = name[..slash];
                if (directories.Add(dir))
                    WriteEntry(stream, dir, Directory | 0x1ED /* 0755 */, [], ino++);
            }
            WriteEntry(stream, name, RegularFile | (mode & 0xFFF), content, ino++);
        }
        WriteEntry(stream, "TRAILER!!!", 0, [], 0);
        return stream.ToArray();
    }

    /// <summary>Writes one header, name and body, each padded to 4 bytes as newc requires.</summary>
    private static void WriteEntry(Stream stream, string name, int mode, byte[] content, int ino)
    {
        var nameBytes = Encoding.UTF8.GetBytes(name);
        var header = new StringBuilder("070701");
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        foreach (var field in new long[] { ino, mode, 0, 0, (mode & Directory) != 0 ? 2 : 1, 0, content.Length, 0, 0, 0, 0, nameBytes.Length + 1, 0 })
            header.Append(field.ToString("X8", System.Globalization.CultureInfo.InvariantCulture));
        stream.Write(Encoding.ASCII.GetBytes(header.ToString()));
        stream.Write(nameBytes);
        stream.WriteByte(0);
        Pad(stream);
        stream.Write(content);
        Pad(stream);
    }

    private static void Pad(Stream stream)
    {
        while (stream.Position % 4 != 0)
            stream.WriteByte(0);
    }
}
