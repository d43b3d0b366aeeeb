#!/usr/bin/env python3
"""Reads `perf script` output (call graphs of the daemon's worker) on stdin and prints where the
time per packet goes, by data-path stage.

Each sample is charged to the innermost frame on its stack that belongs to a stage, so a Memmove
under the header read counts as header, one under the receive copy as copy. Given the back end's
packet rate (--pps), the share of samples becomes nanoseconds per packet: share * 1e9 / pps (the
worker thread is one core, busy the whole time in a PVP loop).

Usage: perf script -i perf.data | scripts/perf-stages.py --pps 3.2e6 [--top 15]
"""
import argparse
import collections
import re
import sys

# (stage, pattern on the frame's symbol), most specific first; the first stage found walking up
# from the leaf takes the sample.
STAGES = [
    ("pop+validate", r"SplitQueue::(Pop|WalkChain|Prefetch)|PackedQueue::(Pop|Walk)|DescriptorChain::(Add|Begin)|GuestMemory::(IsRangeMapped|TryTranslate)"),
    ("used publish", r"::(PushUsed|PublishUsed|LogUsed|WriteUsed)"),
    ("notify", r"::(NeedsNotification|NotifyIfNeeded|FlushNotifications|Signal)|EventFd"),
    ("copy", r"FrameReader::CopyTo|ChainWriter::(CopyFrom|Write)|NetDevice::(Receive|PatchNumBuffers|LocateNumBuffers)"),
    ("switch", r"L2Switch::|NetDevice::(Deliver|PickReceiveQueue|ForwardOwn|get_Stopped)|NetReceiveFilter::|Dictionary|PortCounters::"),
    ("header", r"TransmitHandler::Handle|Frame::\.ctor|ChainReader::|Frame::OpenReader"),
    ("ring loop", r"SplitQueue::Drain|DeviceQueue::|NetDevice::ProcessQueue|Worker::|EventLoop::"),
]
COMPILED = [(name, re.compile(p)) for name, p in STAGES]


def short(symbol):
    """Type::Method out of a JIT symbol ('instance bool [Asm] Ns.Type::Method(args)[Tier]'), else the symbol."""
    m = re.search(r"([\w.`+<>]+::[\w.`<>|]+)", symbol)
    return (m.group(1) if m else symbol)[:100]


def samples(stream):
    """Yields each sample's stack (leaf first) as a list of symbol strings."""
    stack = []
    for line in stream:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
            continue
        if line.startswith((" ", "\t")):
            parts = line.strip().split(None, 1)
            stack.append(parts[1] if len(parts) > 1 else parts[0])
        # a header line (comm pid time event) starts the next sample
    if stack:
        yield stack


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pps", type=float, required=True, help="packets per second the back end forwarded meanwhile")
    ap.add_argument("--top", type=int, default=12, help="also list this many leaf functions")
    args = ap.parse_args()

    by_stage = collections.Counter()
    by_leaf = collections.Counter()
    total = 0
    for stack in samples(sys.stdin):
        total += 1
        by_leaf[short(stack[0])] += 1
        stage = "other (kernel, runtime, idle loop)"
        for frame in stack:
            hit = next((name for name, rx in COMPILED if rx.search(frame)), None)
            if hit:
                stage = hit
                break
        by_stage[stage] += 1
    if total == 0:
        sys.exit("perf-stages: no samples on stdin")
    ns_per_packet = 1e9 / args.pps
    print(f"{total} samples; {args.pps / 1e6:.2f} Mpps forwarded, so {ns_per_packet:.0f} ns of one core per packet")
    print(f"{'stage':<36}{'share':>8}{'ns/packet':>11}")
    for stage, n in by_stage.most_common():
        print(f"{stage:<36}{100 * n / total:>7.1f}%{n / total * ns_per_packet:>11.1f}")
    print(f"\ntop {args.top} leaf functions (self time):")
    for leaf, n in by_leaf.most_common(args.top):
        print(f"{100 * n / total:>6.1f}%  {leaf}")


if __name__ == "__main__":
    main()
