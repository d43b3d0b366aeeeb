#!/usr/bin/env bash
# Coverage-guided fuzzing of one input surface (docs/fuzzing.md): builds the harness (Release),
# instruments the project's assemblies with SharpFuzz, and runs AFL++ on TARGET for SECONDS from the
# target's seed corpus plus its kept regression inputs. Crashes and hangs found are copied into
# tests/VhostUserVirtio.Fuzz/Regressions/TARGET/ (replayed by the unit tests); exits 1 if there were
# crashes. Usage: scripts/fuzz.sh TARGET|all SECONDS. Progress goes to stderr; the last line per target
# (stdout) is "fuzz TARGET: ok|N crash(es), ... execs, ... execs/s, ... edges, ... s".
# Findings of the last run stay in artifacts/fuzz/TARGET/findings.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
targets=(message split-ring packed-ring admin transport net-tx)
say() { echo "fuzz: $*" >&2; }
# A set-up failure: one result line per target asked for, so callers counting them (scripts/test.sh) see each fail.
setup_failed() {
    say "error: $*"
    local t
    if [ "${target:-}" = all ]; then for t in "${targets[@]}"; do echo "fuzz $t: failed to start"; done
    elif [ -n "${target:-}" ]; then echo "fuzz $target: failed to start"; fi
    exit 1
}

if [ $# -ne 2 ] || ! [[ "$2" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 TARGET|all SECONDS (targets: ${targets[*]})" >&2
    exit 2
fi
target="$1" seconds="$2"
if [ "$target" != all ] && ! printf '%s\n' "${targets[@]}" | grep -qx -- "$target"; then
    echo "fuzz: unknown target '$target' (targets: ${targets[*]})" >&2
    exit 2
fi

if ! command -v afl-fuzz >/dev/null 2>&1; then
    say "installing afl++"
    if [ "$(id -u)" -eq 0 ]; then
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y afl++; } >&2 </dev/null || setup_failed "cannot install afl++"
    else
        setup_failed "afl-fuzz is missing; install the afl++ package (apt-get install afl++) as root"
    fi
fi
dotnet tool restore >&2 </dev/null || setup_failed "dotnet tool restore failed (SharpFuzz.CommandLine)"

work="${FUZZ_WORK:-artifacts/fuzz}"   # a separate folder lets two runs (CI smoke, a long run) coexist
mkdir -p "$work"
build="$work/build"
say "building the harness (Release)"
rm -rf "$build"
dotnet build tests/VhostUserVirtio.Fuzz -c Release -o "$build" --disable-build-servers </dev/null >"$work.build.log" 2>&1 \
    || { cat "$work.build.log" >&2; setup_failed "build failed"; }
say "instrumenting the project's assemblies"
# In the back end, only the message and ring handling: the worker loops, the server and the rate
# limiter run on their own threads or clocks, and their edges would only make coverage unstable.
backend=(VhostUserVirtio.Backend.VhostUserBackend VhostUserVirtio.Backend.VhostUserEndpoint
    VhostUserVirtio.Backend.DeviceQueue VhostUserVirtio.Backend.DeliveryGate)
for dll in "$build"/VhostUserVirtio.*.dll; do
    prefixes=()
    case "$(basename "$dll")" in
        VhostUserVirtio.Fuzz.dll) continue ;;
        VhostUserVirtio.Backend.dll) prefixes=("${backend[@]}") ;;
    esac
    dotnet sharpfuzz "$dll" "${prefixes[@]}" >&2 </dev/null || setup_failed "instrumenting $dll failed"
done

export AFL_SKIP_BIN_CHECK=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
    AFL_NO_AFFINITY=1 AFL_FORKSRV_INIT_TMOUT=60000 AFL_SKIP_CRASHES=1
# One crash is enough to fail; a .NET process dumps nothing useful for AFL.
export DOTNET_DbgEnableMiniDump=0

stat() { grep -m1 "^$2 *:" "$1" 2>/dev/null | sed 's/^[^:]*: *//'; }

crashed=0
fuzz_one() {
    local t="$1" dir="$work/$1" kept="tests/VhostUserVirtio.Fuzz/Regressions/$1"
    rm -rf "$dir"
    mkdir -p "$dir/seeds" "$kept"
    dotnet "$build/VhostUserVirtio.Fuzz.dll" "$t" --seeds "$dir/seeds" </dev/null || { say "error: cannot write $t's seeds"; echo "fuzz $t: failed to start"; return 1; }
    find "$kept" -maxdepth 1 -type f ! -name '.*' -exec cp {} "$dir/seeds/" \;
    say "$t: fuzzing for $seconds s from $(ls "$dir/seeds" | wc -l) seeds"
    # -V: stop after the time; -t: per-input limit (ms) generous for a loaded machine.
    nice -n 10 afl-fuzz -i "$dir/seeds" -o "$dir/findings" -V "$seconds" -t 5000 -m none \
        -- dotnet "$build/VhostUserVirtio.Fuzz.dll" "$t" </dev/null >"$dir/afl.log" 2>&1
    local rc=$? out="$dir/findings/default"
    if [ ! -f "$out/fuzzer_stats" ]; then
        tail -n 30 "$dir/afl.log" >&2
        say "error: $t: afl-fuzz did not start (exit $rc)"
        echo "fuzz $t: failed to start"
        return 1
    fi
    local crashes=0 hangs=0 f
    for f in "$out"/crashes/id:* "$out"/hangs/id:*; do
        [ -f "$f" ] || continue
        local kind=crash; [[ "$f" == */hangs/* ]] && kind=hang
        cp "$f" "$kept/$kind-$(sha1sum "$f" | cut -c1-12)"
        if [ "$kind" = crash ]; then crashes=$((crashes + 1)); else hangs=$((hangs + 1)); fi
    done
    local s="$out/fuzzer_stats"
    local summary="$(stat "$s" execs_done) execs, $(stat "$s" execs_per_sec) execs/s, $(stat "$s" corpus_count) paths, $(stat "$s" edges_found) edges ($(stat "$s" bitmap_cvg)), $(stat "$s" run_time) s"
    if [ "$crashes" -gt 0 ]; then
        echo "fuzz $t: $crashes crash(es), $hangs hang(s); kept in $kept; $summary"
        return 1
    fi
    echo "fuzz $t: ok, $hangs hang(s); $summary"
    return 0
}

if [ "$target" = all ]; then
    for t in "${targets[@]}"; do fuzz_one "$t" || crashed=1; done
else
    fuzz_one "$target" || crashed=1
fi
exit "$crashed"
