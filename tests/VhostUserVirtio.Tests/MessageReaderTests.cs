using VhostUserVirtio.Interop;
using VhostUserVirtio.Protocol;

namespace VhostUserVirtio.Tests;

/// <summary>The reader of a front end's byte stream, on its own over a socket pair.</summary>
[Trait("tier", "unit")]
public sealed class MessageReaderTests
{
    [Fact]
    public void A_stream_found_corrupt_stays_corrupt_and_nothing_after_the_bad_header_is_taken_for_a_message()
    {
        var (ours, peer) = UnixSocket.CreatePair();
        using (ours)
        using (peer)
        using (var reader = new MessageReader(ours))
        {
            ours.Descriptor.SetNonBlocking(true);
            var bad = new byte[MessageHeader.Length];
            new MessageHeader((uint)FrontendRequest.GetFeatures, 0x2, 0).Write(bad);   // version 2
            var good = new byte[MessageHeader.Length];
            new MessageHeader((uint)FrontendRequest.GetFeatures, MessageHeader.Version, 0).Write(good);
            peer.Send(bad);
            peer.Send(good);

            Assert.Equal(MessageReader.Status.Corrupt, reader.TryRead(out var first, out string? why));
            Assert.Null(first);
            Assert.NotNull(why);
            // The well-formed header that follows could be anything in a stream out of step: never read.
            Assert.Equal(MessageReader.Status.Corrupt, reader.TryRead(out var second, out string? again));
            Assert.Null(second);
            Assert.Equal(why, again);
        }
    }
}
