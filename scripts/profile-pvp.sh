#!/usr/bin/env bash
# Where the daemon's time per packet goes in the PVP loop: runs scripts/bench-pvp.sh for our back
# end only, records the worker with perf (JIT symbols through DOTNET_PerfMapEnabled=1) while the
# samples are taken, and prints nanoseconds per packet by stage (scripts/perf-stages.py) next to the
# packet rate of the same run.
#
# Usage: scripts/profile-pvp.sh [--size 64] [--seconds 8] [--keep DIR] [-- extra bench-pvp.sh args]
# Needs root, perf (linux-perf; installed when missing) and what bench-pvp.sh needs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
size=64
seconds=8
keep=
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --size) size="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --keep) keep="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "profile-pvp: unknown argument $1" >&2; exit 2 ;;
    esac
done
command -v perf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null

work="$(mktemp -d /tmp/vuv-profile.XXXXXX)"
bench_pid=
pid=
cleanup() {
    [[ -n "$bench_pid" ]] && kill "$bench_pid" 2>/dev/null && wait "$bench_pid" 2>/dev/null
    if [[ -n "$keep" ]]; then mkdir -p "$keep" && cp "$work"/* "$keep"/ 2>/dev/null && echo "kept in $keep"; fi
    rm -rf "$work"
    [[ -n "${pid:-}" ]] && rm -f "/tmp/perf-$pid.map" "/tmp/perfinfo-$pid.map"
}
trap cleanup EXIT

# The daemon inherits these: perf resolves JIT frames from /tmp/perf-PID.map. ReadyToRun off, so the
# framework's own methods (Memmove, Dictionary) are jitted too and get names instead of [unknown].
export DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0 DOTNET_ReadyToRun=0
# Enough samples that perf can start after the daemon is up and still cover several of them.
bash "$root/scripts/bench-pvp.sh" --backends ours --sizes "$size" --samples $((seconds / 2 + 4)) --warmup 4 "${extra[@]}" \
    >"$work/bench.log" 2>&1 &
bench_pid=$!

# Our daemon, not another one on the machine: a descendant of the benchmark.
descends_from() {   # descends_from PID ANCESTOR
    local p="$1"
    while [[ -n "$p" && "$p" -gt 1 ]]; do
        [[ "$p" == "$2" ]] && return 0
        p="$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
    done
    return 1
}
for ((i = 0; i < 1200; i++)); do
    pid=
    for candidate in $(pgrep -f 'vhost-virtio.dll serve' || true); do
        descends_from "$candidate" "$bench_pid" && { pid="$candidate"; break; }
    done
    [[ -n "$pid" ]] && break
    kill -0 "$bench_pid" 2>/dev/null || { cat "$work/bench.log"; echo "profile-pvp: the benchmark ended before the daemon started" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$pid" ]] || { echo "profile-pvp: the daemon did not start" >&2; exit 1; }
# Record once the loop runs (the benchmark's warm-up).
until grep -q 'median\|sample' "$work/bench.log" 2>/dev/null; do
    kill -0 "$bench_pid" 2>/dev/null || break
    sleep 0.5
done
echo "profile-pvp: recording daemon $pid for $seconds s"
perf record -q -g -p "$pid" -o "$work/perf.data" -- sleep "$seconds" 2>"$work/perf-record.log" || true
wait "$bench_pid"; bench_pid=
cat "$work/bench.log" | grep -E 'median|samples' || true

pps="$(grep -oE "ours: ${size} B [a-z]+ [0-9]+ qp median [0-9.]+ M" "$work/bench.log" | tail -n 1 | grep -oE '[0-9.]+ M$' | tr -d ' M')"
[[ -n "$pps" ]] || { cat "$work/bench.log"; echo "profile-pvp: no packet rate in the benchmark's output" >&2; exit 1; }
perf script -i "$work/perf.data" 2>/dev/null | python3 "$root/scripts/perf-stages.py" --pps "${pps}e6"
