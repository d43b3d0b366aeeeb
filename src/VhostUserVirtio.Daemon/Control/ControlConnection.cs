using System.Buffers;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using VhostUserVirtio.Backend.Diagnostics;

namespace VhostUserVirtio.Daemon.Control;

/// <summary>What the control socket allows one client and all of them.</summary>
internal sealed record ControlLimits
{
    /// <summary>Longest request line; a longer one gets an error reply and the connection is closed.</summary>
    public int MaxLineBytes { get; init; } = 64 * 1024;

    /// <summary>Clients served at once; one more gets an error reply and is closed.</summary>
    public int MaxClients { get; init; } = 16;

    /// <summary>How long a reply may wait for the client to take it before the client is dropped.</summary>
    public TimeSpan WriteTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How long a client may stay without sending a complete request before it is dropped.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(60);
}

/// <summary>
/// One control client: newline-delimited requests read through a <see cref="PipeReader"/>, one reply
/// line each through a <see cref="PipeWriter"/>, in order. Requests are handled one at a time and the
/// next is not read until the reply was taken, so a client that sends without reading holds at most
/// one reply and one line of input here; if it does not take a reply within the write timeout it is
/// dropped. Buffer ownership is the Pipelines kind: each line is consumed (AdvanceTo) only after it
/// was answered, and nothing of the reader's buffer is kept past that.
/// </summary>
internal static class ControlConnection
{
    /// <summary>
    /// Serves a client on a stream (a socket's, or one end of an in-process pair) until it disconnects,
    /// breaks a limit or <paramref name="stop"/> is signalled; disposes the stream. Never throws.
    /// </summary>
    public static async Task ServeAsync(Stream stream, ControlCommands commands, ControlLimits limits, ILogger log, LogRateLimit logLimit, CancellationToken stop)
    {
        await using (stream.ConfigureAwait(false))
        {
            await ServeAsync(
                PipeReader.Create(stream, new StreamPipeReaderOptions(bufferSize: 4096, leaveOpen: true)),
                PipeWriter.Create(stream, new StreamPipeWriterOptions(leaveOpen: true)),
                commands, limits, log, logLimit, stop, abort: stream.Dispose).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Serves a client on a pair of pipes. <paramref name="abort"/> closes the transport under them
    /// when the client is dropped, so that completing the writer does not wait to flush what the
    /// client never takes.
    /// </summary>
    public static async Task ServeAsync(PipeReader input, PipeWriter output, ControlCommands commands, ControlLimits limits, ILogger log,
        LogRateLimit logLimit, CancellationToken stop, Action? abort = null)
    {
        string? dropped = null;
        try
        {
            while (true)
            {
                ReadResult read;
                using (var idle = CancellationTokenSource.CreateLinkedTokenSource(stop))
                {
                    idle.CancelAfter(limits.IdleTimeout);
                    try
                    {
                        read = await input.ReadAsync(idle.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException) when (!stop.IsCancellationRequested)
                    {
                        dropped = $"no request for {limits.IdleTimeout.TotalSeconds:0} s";
                        return;
                    }
                }
                var buffer = read.Buffer;
                while (TryReadLine(ref buffer, out var line))
                {
                    if (line.Length > limits.MaxLineBytes)
                    {
                        dropped = await RefuseLongLine(output, limits).ConfigureAwait(false);
                        return;
                    }
                    if (IsBlank(line))
                        continue;
                    commands.Execute(line, output);
                    if (await Flush(output, limits).ConfigureAwait(false) is { } why)
                    {
                        dropped = why;
                        return;
                    }
                }
                if (buffer.Length > limits.MaxLineBytes)
                {
                    dropped = await RefuseLongLine(output, limits).ConfigureAwait(false);
                    return;
                }
                // What is left is the start of the next line: examined, not consumed.
                input.AdvanceTo(buffer.Start, buffer.End);
                if (read.IsCompleted)
                {
                    if (buffer.Length > 0)
                        log.LogDebug("control client left in the middle of a request ({Bytes} bytes unanswered)", buffer.Length);
                    return;
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // The daemon is stopping.
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            dropped = e.Message; // the client went away mid-reply, or its socket failed
        }
        finally
        {
            if (dropped != null)
            {
                log.LogLimited(logLimit, LogLevel.Warning, "control client dropped: {Reason}", dropped);
                abort?.Invoke();
            }
            await Complete(input, output).ConfigureAwait(false);
        }
    }

    /// <summary>Completes both pipes; a transport already closed makes the writer's last flush fail, which is expected.</summary>
    internal static async Task Complete(PipeReader? input, PipeWriter output)
    {
        try
        {
            if (input != null)
                await input.CompleteAsync().ConfigureAwait(false);
            await output.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException or InvalidOperationException)
        {
        }
    }

    /// <summary>Sends what was written; returns why the client is dropped when it does not take it in time.</summary>
    private static async Task<string?> Flush(PipeWriter output, ControlLimits limits)
    {
        using var timeout = new CancellationTokenSource(limits.WriteTimeout);
        try
        {
            var flushed = await output.FlushAsync(timeout.Token).ConfigureAwait(false);
            return flushed.IsCanceled ? "reply not taken" : flushed.IsCompleted ? "the client closed its end" : null;
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested)
        {
            return $"it did not read its replies for {limits.WriteTimeout.TotalSeconds:0.#} s";
        }
    }

    private static async Task<string> RefuseLongLine(PipeWriter output, ControlLimits limits)
    {
        ControlCommands.WriteError(output, $"request line longer than {limits.MaxLineBytes} bytes");
        await Flush(output, limits).ConfigureAwait(false);
        return $"a request line longer than {limits.MaxLineBytes} bytes";
    }

    /// <summary>Takes one line (without "\n" and a "\r" before it) off the front of <paramref name="buffer"/>.</summary>
    private static bool TryReadLine(ref ReadOnlySequence<byte> buffer, out ReadOnlySequence<byte> line)
    {
        var reader = new SequenceReader<byte>(buffer);
        if (!reader.TryReadTo(out line, (byte)'\n'))
            return false;
        buffer = buffer.Slice(reader.Position);
        if (line.Length > 0 && line.Slice(line.Length - 1).FirstSpan[0] == (byte)'\r')
            line = line.Slice(0, line.Length - 1);
        return true;
    }

    private static bool IsBlank(ReadOnlySequence<byte> line)
    {
        foreach (var segment in line)
            if (segment.Span.IndexOfAnyExcept(" \t"u8) >= 0)
                return false;
        return true;
    }
}
