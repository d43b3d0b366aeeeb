#!/usr/bin/env bash
# Soak: runs the daemon for MINUTES with traffic and periodic churn, and prints once a minute what
# it holds (resident memory, descriptors, threads, mappings), so a leak shows as a trend.
#   scripts/soak.sh MINUTES [--vfs N] [--reconnect-every S] [--link-every S] [--vdev-every S]
#                   [--vf-cycle-every S] [--traffic ON/PERIOD] [--warmup MINUTES] [--results FILE]
#                   [--max-fd-growth N] [--max-thread-growth N] [--max-map-growth N] [--max-rss-growth-mb N]
#                   [--keep [--kill-every S]]
#
# Set-up: `vhost-virtio serve --vfs N` (default 3: VFs 1..3 beside the owner) from the Release build
# (built if missing), and two DPDK testpmd virtio-user front ends: "tx" on vf1.sock in txonly mode,
# sending 64-byte frames to VF 2's MAC, and "rx" on vf2.sock in rxonly mode (after one burst of its
# own, so the switch learns its MAC rather than flooding every frame). Both have their one
# forwarding lcore on CPU 0 (--pmd-cpu), niced, and forward only ON of every PERIOD seconds
# (--traffic, default 1/5): a testpmd lcore spins a whole CPU while started, and the machine is shared.
# Churn, each on its own period (seconds; 0 turns one off), done between traffic bursts:
#   reconnect  quit one front end (tx and rx in turn) and start it again          (default 30)
#   link       admin queue NET_MEMBER_CTRL: `admin vf K link down`, then `up`,
#              K = 1, 2, 3, ... in turn, with LIST_QUERY (`admin list`) each time  (default 40)
#   vdev       transport queue: `vdev create`, `vdev info ID`, `vdev destroy ID`,
#              then `vdev list` must not show it                                  (default 20)
#   vf-cycle   SR-IOV VF Disable/Enable (`admin vfs set 0`, then `set N`) with the front ends
#              attached; the daemon drops them and removes the VF sockets; both restart (default 120)
#   kill       (--keep only) SIGKILL to the daemon; the keeper starts a new one, which must be ready
#              and resume both front ends' sessions: same testpmd processes, link up, frames
#              still arriving                                                     (default 45)
# --keep: the daemon runs under `vhost-virtio keep -- serve ...` (the session keeper). Samples are
# then of the current daemon (its pid changes with each kill) and of the keeper, whose descriptors
# must stay flat across restarts; a restart nobody asked for (a crash) fails the run.
# Each minute one line (and one TSV row in --results, default artifacts/soak/soak-<date>.tsv): the
# minute, daemon VmRSS (kB), open fds, threads, mappings (lines of /proc/PID/maps) and VmSize (kB),
# churn operations done per kind and failed in all, and the frames the rx front end received and
# the tx front end sent in that minute; with --keep also kills, sessions resumed, and the keeper's
# VmRSS, fds, threads and mappings (extra TSV columns). Samples are taken at the same point of the loop (front ends
# attached, no vdev, no owner connection), so they compare.
# At the end: first minute after the warm-up (--warmup, default 5, less for short runs) against the
# last, as growth per hour. Exit 1 if the daemon (or keeper) died, a churn operation failed, no frame
# got through, or fds, threads or mappings grew by more than the thresholds (8, 8, 64), the keeper's
# included; RSS is reported (.NET grows its heap, then levels off) and fails only above
# --max-rss-growth-mb (256).
# The daemon log (and the keeper's) goes beside the TSV (.daemon.log), with the testpmd logs (.tx.log, .rx.log).
# Needs root or enough locked memory for DPDK. Traffic stays on the vhost-user sockets. Everything
# it starts (daemon, testpmd, sockets, DPDK runtime folders) is removed on exit, Ctrl-C included.
set -euo pipefail
# One compound command: bash reads it whole before running it, so an edit to this file during an
# hour's run does not change what the run does.
{
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/bench.sh
source "$root/scripts/lib/bench.sh"   # say, stop_pid, wait_sockets
# shellcheck source=lib/testpmd.sh
source "$root/scripts/lib/testpmd.sh" # wait_log, pmd_cmd, pmd_link_up, pmd_quit

minutes=
vfs=3
every_reconnect=30 every_link=40 every_vdev=20 every_vfcycle=120 every_kill=
keep=0
traffic=1/5
warmup=
results=
max_fd=8 max_threads=8 max_maps=64 max_rss_mb=256
pmd_cpu=0
timeout=60     # seconds to wait for any one thing (wait_sockets, a testpmd prompt, a CLI command)

while [[ $# -gt 0 ]]; do
    case "$1" in
        --vfs) vfs="$2"; shift 2 ;;
        --reconnect-every) every_reconnect="$2"; shift 2 ;;
        --link-every) every_link="$2"; shift 2 ;;
        --vdev-every) every_vdev="$2"; shift 2 ;;
        --vf-cycle-every) every_vfcycle="$2"; shift 2 ;;
        --kill-every) every_kill="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        --traffic) traffic="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --results) results="$2"; shift 2 ;;
        --max-fd-growth) max_fd="$2"; shift 2 ;;
        --max-thread-growth) max_threads="$2"; shift 2 ;;
        --max-map-growth) max_maps="$2"; shift 2 ;;
        --max-rss-growth-mb) max_rss_mb="$2"; shift 2 ;;
        --pmd-cpu) pmd_cpu="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        -*) echo "soak: unknown option $1" >&2; exit 2 ;;
        *) [[ -z "$minutes" ]] || { echo "soak: one MINUTES only" >&2; exit 2; }; minutes="$1"; shift ;;
    esac
done
[[ "$minutes" =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/soak.sh MINUTES [options]; see --help" >&2; exit 2; }
((vfs >= 2)) || { echo "soak: --vfs must be at least 2 (traffic runs between VF 1 and VF 2)" >&2; exit 2; }
[[ "$traffic" =~ ^([0-9]+)/([1-9][0-9]*)$ ]] || { echo "soak: --traffic ON/PERIOD, e.g. 1/5" >&2; exit 2; }
traffic_on="${BASH_REMATCH[1]}" traffic_period="${BASH_REMATCH[2]}"
[[ -n "$every_kill" ]] || every_kill=$((keep ? 45 : 0))
((keep || every_kill == 0)) || { echo "soak: --kill-every needs --keep (a killed daemon is restarted by the keeper)" >&2; exit 2; }
# Warm-up: the .NET runtime, the JIT and the thread pool settle in the first minutes.
[[ -n "$warmup" ]] || warmup=$((minutes >= 30 ? 5 : minutes >= 10 ? 2 : minutes >= 3 ? 1 : 0))
((warmup < minutes)) || warmup=$((minutes - 1))

stamp="$(date -u +%Y%m%d-%H%M%S)"
[[ -n "$results" ]] || results="$root/artifacts/soak/soak-$stamp.tsv"
mkdir -p "$(dirname "$results")"
results="$(cd "$(dirname "$results")" && pwd)/$(basename "$results")"
base="${results%.tsv}"
daemon_log="$base.daemon.log"

work="$(mktemp -d /tmp/vuv-soak.XXXXXX)"
sock="$work/sockets"
tag="vuvsoak$$"            # DPDK --file-prefix stem for this run
dpdk_run=/var/run/dpdk
[[ $(id -u) -eq 0 ]] || dpdk_run="${XDG_RUNTIME_DIR:-/tmp}/dpdk"
daemon_dll="$root/src/VhostUserVirtio.Daemon/bin/Release/net10.0/vhost-virtio.dll"
# Each VF's own MAC (MacBase 02:56:56:00:00:00 plus the VF number): an untrusted VF may send only from it.
mac1=02:56:56:00:00:01
mac2=02:56:56:00:00:02
daemon_pid=
keeper_pid=
log_start=0     # where this run's lines start in the daemon log
kills_sent=0 resumed_total=0 unexpected_restarts=0
declare -a restart_ms=()

# ---- cleanup --------------------------------------------------------------------------------
declare -A pmd_fd=() pmd_pid=() pmd_log=()
cleanup() {
    local name
    trap - EXIT INT TERM
    for name in "${!pmd_pid[@]}"; do pmd_quit "$name" || true; done
    # The keeper passes SIGTERM on to its daemon; a daemon left behind by a killed keeper goes too.
    [[ -n "$keeper_pid" ]] && stop_pid "$keeper_pid"
    [[ -n "$daemon_pid" ]] && grep -qs vhost-virtio "/proc/$daemon_pid/cmdline" && stop_pid "$daemon_pid"
    wait 2>/dev/null || true
    rm -rf "$work" "${dpdk_run:?}/$tag"-*
}
trap cleanup EXIT
trap 'echo; say "interrupted"; exit 130' INT TERM

# ---- interactive testpmd through a FIFO (helpers in lib/testpmd.sh; logs appended across restarts) ----
pmd_start() {   # pmd_start NAME EAL-ARGS... -- APP-ARGS...   (waits for the prompt)
    local name="$1"; shift
    local fifo="$work/$name.in" log="$base.$name.log" fd off
    rm -f "$fifo"; mkfifo "$fifo"; touch "$log"
    off=$(stat -c %s "$log")
    printf '==== %s start\n' "$(date -u +%T)" >>"$log"
    exec {fd}<>"$fifo"   # read-write: never blocks, and testpmd never sees end of input
    stdbuf -oL -eL nice -n 10 dpdk-testpmd --file-prefix "$tag-$name" "$@" -i <"$fifo" >>"$log" 2>&1 &
    pmd_pid[$name]=$!; pmd_fd[$name]=$fd; pmd_log[$name]=$log
    wait_log "$name" "$off" 'testpmd> ' || { say "$name: testpmd did not start"; return 1; }
    if tail -c "+$((off + 1))" "$log" | grep -qE 'failed to initialize .* device|No probed ethernet devices'; then
        say "$name: its port failed to probe"; return 1
    fi
}


# front_end tx|rx: starts that front end and waits for its link. 256 MB of memfd memory each.
front_end() {
    local name="$1" vdev app
    if [[ "$name" == tx ]]; then
        vdev="net_virtio_user0,path=$sock/vf1.sock,queues=1,mac=$mac1"
        app=(--forward-mode=txonly --txpkts=64 "--eth-peer=0,$mac2")
    else
        vdev="net_virtio_user0,path=$sock/vf2.sock,queues=1,mac=$mac2"
        app=(--forward-mode=rxonly --txpkts=64 "--eth-peer=0,$mac1")
    fi
    pmd_start "$name" --lcores "0@$pmd_cpu,1@$pmd_cpu" --main-lcore 0 --no-huge -m 256 --no-pci --vdev "$vdev" -- \
        --nb-cores=1 --total-num-mbufs=8192 "${app[@]}" || return 1
    pmd_link_up "$name" || { say "$name: link did not come up"; return 1; }
}

# ---- the daemon and its CLIs ----------------------------------------------------------------
cli() {   # cli admin|vdev ARGS...: one owner-driver command; its output on stdout, false on failure
    local out rc=0
    out="$(timeout "$timeout" dotnet "$daemon_dll" "$1" --socket "$sock/pf.sock" "${@:2}" </dev/null 2>&1)" || rc=$?
    printf '%s\n' "$out"
    ((rc == 0)) || { say "  '$*' failed (exit $rc): $(tr '\n' ' ' <<<"$out" | cut -c1-300)"; return 1; }
}

# With --keep: the keeper's latest "daemon started (pid N, start K)" line, as "N K".
latest_start() {
    tail -c "+$((log_start + 1))" "$daemon_log" | grep -oE 'daemon started \(pid [0-9]+, start [0-9]+\)' | tail -n 1 \
        | sed -E 's/.*pid ([0-9]+), start ([0-9]+).*/\1 \2/'
}

# With --keep: daemon_pid becomes the keeper's current child; a start beyond one per kill is a
# restart nobody asked for (the daemon crashed), counted and reported.
refresh_child() {
    local pid start
    read -r pid start <<<"$(latest_start)"
    [[ -n "$pid" ]] || return 0
    daemon_pid="$pid"
    if ((start - 1 - kills_sent > unexpected_restarts)); then
        unexpected_restarts=$((start - 1 - kills_sent))
        say "THE DAEMON RESTARTED BY ITSELF (start $start after $kills_sent kill(s)); keeper log:"
        grep -E 'died after|crit:|Unhandled' "$daemon_log" | tail -n 5 | sed 's/^/    /'
    fi
}

daemon_alive() {
    if ((keep)); then
        kill -0 "$keeper_pid" 2>/dev/null || return 1
        refresh_child
        return 0
    fi
    [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null
}

vf_sockets() { local i; for ((i = 1; i <= vfs; i++)); do echo "$sock/vf$i.sock"; done; }

# ---- churn operations (each returns false on an unexpected failure) -------------------------
reconnect_side=tx
op_reconnect() {
    local side="$reconnect_side"
    [[ "$side" == tx ]] && reconnect_side=rx || reconnect_side=tx
    pmd_quit "$side"
    front_end "$side"
}

link_vf=1
op_link() {
    local k="$link_vf"
    link_vf=$((link_vf % vfs + 1))
    cli admin list >/dev/null || return 1
    cli admin vf "$k" link down >/dev/null || return 1
    sleep 1
    cli admin vf "$k" link up >/dev/null || return 1
    # The front ends see the link come back (config change) before traffic resumes.
    if ((k == 1)); then pmd_link_up tx; elif ((k == 2)); then pmd_link_up rx; fi
}

op_vdev() {
    local out id
    out="$(cli vdev create)" || return 1
    [[ "$out" =~ vdev\ ([0-9]+)\ created ]] || { say "  vdev create printed: $out"; return 1; }
    id="${BASH_REMATCH[1]}"
    cli vdev info "$id" >/dev/null || return 1
    cli vdev destroy "$id" >/dev/null || return 1
    out="$(cli vdev list)" || return 1
    if grep -qx "vdev $id" <<<"$out"; then say "  vdev $id still listed after destroy"; return 1; fi
}

op_vfcycle() {
    local s end
    cli admin vfs set 0 >/dev/null || return 1
    end=$((SECONDS + timeout))
    while (( SECONDS < end )); do
        s=0; for f in $(vf_sockets); do [[ -e "$f" ]] && s=1; done
        ((s == 0)) && break
        sleep 0.2
    done
    ((s == 0)) || { say "  VF sockets still there after num_vfs 0"; return 1; }
    cli admin vfs set "$vfs" >/dev/null || return 1
    # shellcheck disable=SC2046 # one path per word
    wait_sockets "$daemon_pid" $(vf_sockets) || { say "  VF sockets did not come back"; return 1; }
    pmd_quit tx; pmd_quit rx
    front_end rx && front_end tx
}

# SIGKILL to the daemon under the keeper: a new one must start, be ready and resume the sessions of
# both attached front ends, which keep their connections (same processes, link up, traffic flows).
op_kill() {
    local old off end seg pid="" path n=0 t_start t_ms before p
    local -A fe_pid=([tx]="${pmd_pid[tx]:-}" [rx]="${pmd_pid[rx]:-}")
    refresh_child
    old="$daemon_pid"
    kill -0 "$old" 2>/dev/null || { say "  daemon pid $old is not running before the kill"; return 1; }
    off=$(stat -c %s "$daemon_log")
    kills_sent=$((kills_sent + 1))
    t_start=${EPOCHREALTIME/./}
    kill -KILL "$old"
    end=$((SECONDS + timeout))
    while true; do
        seg="$(tail -c "+$((off + 1))" "$daemon_log")"
        if [[ "$seg" =~ daemon\ started\ \(pid\ ([0-9]+), ]]; then pid="${BASH_REMATCH[1]}"; fi
        if grep -q 'could not be resumed' <<<"$seg"; then
            say "  a session was not resumed after the kill: $(grep 'could not be resumed' <<<"$seg" | head -n 2 | tr '\n' ' ')"
            return 1
        fi
        n=0
        for path in "$sock/vf1.sock" "$sock/vf2.sock"; do
            grep -qF "session on $path resumed after the restart" <<<"$seg" && n=$((n + 1))
        done
        [[ -n "$pid" ]] && grep -qE "ready: .*pid $pid\b" <<<"$seg" && ((n == 2)) && break
        kill -0 "$keeper_pid" 2>/dev/null || { say "  the keeper died"; return 1; }
        ((SECONDS < end)) || { say "  after the kill of $old: new daemon '${pid:-none}', $n of 2 sessions resumed within ${timeout}s"; return 1; }
        sleep 0.1
    done
    restart_ms+=($(((${EPOCHREALTIME/./} - t_start) / 1000)))
    resumed_total=$((resumed_total + n))
    daemon_pid="$pid"
    # The front ends did not notice: same processes, link up, and frames still get through.
    for p in tx rx; do
        [[ -n "${fe_pid[$p]}" && "${pmd_pid[$p]:-}" == "${fe_pid[$p]}" ]] && kill -0 "${fe_pid[$p]}" 2>/dev/null \
            || { say "  front end $p is gone after the kill"; return 1; }
        pmd_link_up "$p" || { say "  front end $p: link not up after the kill"; return 1; }
    done
    if ((traffic_on > 0)); then
        before=$rx_total
        burst
        ((rx_total > before)) || { say "  no frame reached the rx front end after the kill"; return 1; }
    fi
}

declare -A every=([reconnect]=$every_reconnect [link]=$every_link [vdev]=$every_vdev [vfcycle]=$every_vfcycle [kill]=$every_kill)
declare -A due=() done_ops=() failed_ops=()
kinds=(reconnect link vdev vfcycle)
((keep)) && kinds+=(kill)

run_due_churn() {
    local k
    for k in "${kinds[@]}"; do
        (( every[$k] > 0 && SECONDS >= due[$k] )) || continue
        due[$k]=$((SECONDS + every[$k]))
        if "op_$k"; then
            done_ops[$k]=$((done_ops[$k] + 1))
        else
            failed_ops[$k]=$((failed_ops[$k] + 1))
            say "churn $k failed (${failed_ops[$k]} so far)"
            # Put the front ends back, so one failure does not stop the traffic for the rest of the run.
            [[ -n "${pmd_pid[tx]:-}" ]] && kill -0 "${pmd_pid[tx]}" 2>/dev/null || { pmd_quit tx; front_end tx || true; }
            [[ -n "${pmd_pid[rx]:-}" ]] && kill -0 "${pmd_pid[rx]}" 2>/dev/null || { pmd_quit rx; front_end rx || true; }
        fi
        daemon_alive || return 1
    done
}

# ---- traffic --------------------------------------------------------------------------------
rx_minute=0 tx_minute=0 rx_total=0
# The "Accumulated forward statistics" block `stop` prints: RX-packets or TX-packets.
stop_count() { awk -v what="$1" '/Accumulated forward statistics/ {a = 1} a && $1 == what {print $2; exit}'; }

# Traffic for traffic_on seconds, the rx side first, so it is listening when tx starts. It starts
# with one burst of its own (tx_first, to VF 1), so the switch learns VF 2's MAC: frames to a MAC
# never seen as a source are flooded to every port.
burst() {
    local out n
    ((traffic_on > 0)) || return 0
    [[ -n "${pmd_pid[rx]:-}" && -n "${pmd_pid[tx]:-}" ]] || return 0
    pmd_cmd rx "start tx_first" >/dev/null || return 0
    pmd_cmd tx start >/dev/null || return 0
    sleep "$traffic_on"
    if out="$(pmd_cmd tx stop)"; then n="$(stop_count TX-packets: <<<"$out")"; tx_minute=$((tx_minute + ${n:-0})); fi
    sleep 0.2   # what is in flight arrives
    if out="$(pmd_cmd rx stop)"; then n="$(stop_count RX-packets: <<<"$out")"; rx_minute=$((rx_minute + ${n:-0})); rx_total=$((rx_total + ${n:-0})); fi
}

# ---- samples --------------------------------------------------------------------------------
status_field() { awk -v k="$1:" '$1 == k {print $2}' "/proc/${2:-$daemon_pid}/status"; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# What the descriptors and mappings are, by kind (numbers blanked), for the summary's diff.
holdings() {   # holdings [PID]
    local pid="${1:-$daemon_pid}"
    find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 -printf 'fd %l\n' 2>/dev/null
    awk '{print "map", ($6 == "" ? "[anonymous]" : $6)}' "/proc/$pid/maps" 2>/dev/null
}
kinds_of() { sed -E 's/[0-9]+/N/g' | LC_ALL=C sort | uniq -c | awk '{n = $1; $1 = ""; print substr($0, 2) "\t" n}' | LC_ALL=C sort -t $'\t' -k1,1; }

declare -a rows=()
report() {   # report MINUTE
    local m="$1" rss fds threads maps vmsize failed=0 k done_text="" row keeper_text=""
    local krss kfds kthreads kmaps
    rss="$(status_field VmRSS)"; threads="$(status_field Threads)"; vmsize="$(status_field VmSize)"
    fds="$(find "/proc/$daemon_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
    maps="$(wc -l <"/proc/$daemon_pid/maps")"
    for k in "${kinds[@]}"; do failed=$((failed + failed_ops[$k])); done
    row="$m	$((SECONDS - t0))	$rss	$fds	$threads	$maps	$vmsize	${done_ops[reconnect]}	${done_ops[link]}	${done_ops[vdev]}	${done_ops[vfcycle]}	$failed	$rx_minute	$tx_minute"
    if ((keep)); then
        krss="$(status_field VmRSS "$keeper_pid")"; kthreads="$(status_field Threads "$keeper_pid")"
        kfds="$(fd_count "$keeper_pid")"; kmaps="$(wc -l <"/proc/$keeper_pid/maps")"
        row+="	${done_ops[kill]}	$resumed_total	$krss	$kfds	$kthreads	$kmaps	$daemon_pid"
        keeper_text="$(printf '  kill %d resumed %d  keeper rss %6d kB fds %3d threads %2d maps %4d  pid %d' \
            "${done_ops[kill]}" "$resumed_total" "$krss" "$kfds" "$kthreads" "$kmaps" "$daemon_pid")"
    fi
    rows+=("$row")
    # The sample the summary starts from (after the warm-up) and the latest one.
    if ((${#rows[@]} == warmup + 1)); then
        holdings | kinds_of >"$work/held.first"
        ((keep)) && holdings "$keeper_pid" | kinds_of >"$work/keeper.first"
    fi
    holdings | kinds_of >"$work/held.last"
    ((keep)) && holdings "$keeper_pid" | kinds_of >"$work/keeper.last"
    printf '%s\n' "$row" >>"$results"
    printf '[%(%H:%M:%S)T] min %3d  rss %7d kB  fds %4d  threads %3d  maps %5d  vmsize %9d kB  churn reconnect %d link %d vdev %d vf-cycle %d failed %d  rx %d tx %d%s\n' -1 \
        "$m" "$rss" "$fds" "$threads" "$maps" "$vmsize" "${done_ops[reconnect]}" "${done_ops[link]}" "${done_ops[vdev]}" "${done_ops[vfcycle]}" "$failed" "$rx_minute" "$tx_minute" "$keeper_text"
    rx_minute=0 tx_minute=0
}

# ---- set-up ---------------------------------------------------------------------------------
command -v dpdk-testpmd >/dev/null || bash "$root/scripts/dpdk/install.sh" >/dev/null
if [[ ! -f "$daemon_dll" ]] || [[ -n "$(find "$root/src" -name '*.cs' -newer "$daemon_dll" -print -quit)" ]]; then
    say "building the daemon (Release)"
    dotnet build "$root/src/VhostUserVirtio.Daemon/VhostUserVirtio.Daemon.csproj" -c Release \
        --nologo -v quiet --disable-build-servers </dev/null >"$work/build.log" 2>&1 \
        || { tail -n 20 "$work/build.log"; exit 1; }
fi
mkdir -p "$sock"
touch "$daemon_log"
log_start=$(stat -c %s "$daemon_log")
# --allow-unsealed-memory: testpmd's --no-huge memory is a memfd that cannot be sealed.
serve=(serve --socket-dir "$sock" --vfs "$vfs" --allow-unsealed-memory)
if ((keep)); then
    dotnet "$daemon_dll" keep -- "${serve[@]}" </dev/null >>"$daemon_log" 2>&1 &
    keeper_pid=$!
    # shellcheck disable=SC2046
    wait_sockets "$keeper_pid" "$sock/pf.sock" $(vf_sockets) || { say "keeper or daemon did not start:"; tail -n 20 "$daemon_log"; exit 1; }
    refresh_child
    [[ -n "$daemon_pid" ]] || { say "no 'daemon started' line from the keeper:"; tail -n 20 "$daemon_log"; exit 1; }
    say "soak: $minutes minute(s); keeper pid $keeper_pid, daemon pid $daemon_pid, owner and $vfs VFs in $sock"
else
    dotnet "$daemon_dll" "${serve[@]}" </dev/null >>"$daemon_log" 2>&1 &
    daemon_pid=$!
    # shellcheck disable=SC2046
    wait_sockets "$daemon_pid" "$sock/pf.sock" $(vf_sockets) || { say "daemon did not start:"; tail -n 20 "$daemon_log"; exit 1; }
    say "soak: $minutes minute(s); daemon pid $daemon_pid, owner and $vfs VFs in $sock"
fi
say "churn every: reconnect ${every_reconnect}s, link ${every_link}s, vdev ${every_vdev}s, vf-cycle ${every_vfcycle}s$( ((keep)) && echo ", kill ${every_kill}s") (0 = off); traffic ${traffic_on}s of every ${traffic_period}s"
say "results $results, daemon log $daemon_log; warm-up $warmup minute(s)"
front_end rx && front_end tx || { say "front ends did not start"; exit 1; }

{
    printf 'minute\tseconds\trss_kb\tfds\tthreads\tmaps\tvmsize_kb\treconnects\tlink_cycles\tvdev_cycles\tvf_cycles\tfailed\trx_packets\ttx_packets'
    ((keep)) && printf '\tkills\tresumed\tkeeper_rss_kb\tkeeper_fds\tkeeper_threads\tkeeper_maps\tdaemon_pid'
    printf '\n'
} >"$results"
for k in "${kinds[@]}"; do done_ops[$k]=0; failed_ops[$k]=0; done
t0=$SECONDS
for k in "${kinds[@]}"; do due[$k]=$((t0 + every[$k])); done
end=$((t0 + minutes * 60))
minute=0
died=0

# ---- main loop: a burst, the churn that is due, a sample when a minute has passed ----------
while ((SECONDS < end)) || ((minute < minutes)); do
    period_start=$SECONDS
    burst
    daemon_alive || { died=1; break; }
    ((SECONDS < end)) && { run_due_churn || { died=1; break; }; }
    if ((SECONDS - t0 >= (minute + 1) * 60)); then
        minute=$((minute + 1)); report "$minute"
    fi
    rest=$((traffic_period - (SECONDS - period_start)))
    ((rest > 0 && SECONDS < end)) && sleep "$rest"
done

# ---- summary --------------------------------------------------------------------------------
fail=()
if ((died)); then
    wait "${keeper_pid:-$daemon_pid}" 2>/dev/null && rc=0 || rc=$?
    say "THE $( ((keep)) && echo KEEPER || echo DAEMON) DIED (exit $rc) after $(((SECONDS - t0) / 60)) minute(s); last log lines:"
    tail -n 30 "$daemon_log" | sed 's/^/    /'
    fail+=("$( ((keep)) && echo keeper || echo daemon) died")
    ((keep)) && keeper_pid= || daemon_pid=
fi
if ((keep)); then
    refresh_child
    ((unexpected_restarts == 0)) || fail+=("the daemon restarted by itself $unexpected_restarts time(s)")
    if ((${#restart_ms[@]})); then
        echo "  kills: ${done_ops[kill]} done, $resumed_total session(s) resumed; kill to both sessions resumed: $(printf '%s\n' "${restart_ms[@]}" | sort -n | awk '{v[NR] = $1} END {printf "min %d ms, median %d ms, max %d ms", v[1], v[int((NR + 1) / 2)], v[NR]}')"
    fi
fi
echo
echo "soak summary: $minute minute(s), results $results"
for k in "${kinds[@]}"; do printf '  %-10s done %4d  failed %d\n' "$k" "${done_ops[$k]}" "${failed_ops[$k]}"; done
for k in "${kinds[@]}"; do ((failed_ops[$k] == 0)) || fail+=("$k failed ${failed_ops[$k]} time(s)"); done
((rx_total > 0)) || fail+=("no frame reached the rx front end")
idle="$(printf '%s\n' "${rows[@]}" | awk -F'\t' '$13 == 0' | wc -l)"
echo "  frames received by the rx front end: $rx_total; minutes with none: $idle"
if ((${#rows[@]} >= 2)); then
    IFS=$'\t' read -r -a first <<<"${rows[$warmup]:-${rows[0]}}"
    IFS=$'\t' read -r -a last <<<"${rows[-1]}"
    span=$((last[1] - first[1]))
    echo "  minute ${first[0]} (after $warmup minute(s) of warm-up) -> minute ${last[0]} (${span} s):"
    per_hour() { awk -v d="$1" -v s="$span" 'BEGIN {if (s > 0) printf "%+.1f", d * 3600 / s; else print "n/a"}'; }
    growth() {   # growth NAME INDEX UNIT LIMIT
        local d=$((last[$2] - first[$2]))
        printf '    %-8s %9s -> %9s %s  (%+d, %s per hour)\n' "$1" "${first[$2]}" "${last[$2]}" "$3" "$d" "$(per_hour "$d")"
        [[ -z "$4" ]] || ((d <= $4)) || fail+=("$1 grew by $d (limit $4)")
    }
    growth rss 2 kB "$((max_rss_mb * 1024))"
    growth fds 3 "" "$max_fd"
    growth threads 4 "" "$max_threads"
    growth maps 5 "" "$max_maps"
    growth vmsize 6 kB ""
    # Which kinds of descriptor or mapping came or went between the two samples.
    held_diff() {
        [[ -f "$1" && -f "$2" ]] || return 0
        LC_ALL=C join -t $'\t' -a 1 -a 2 -e 0 -o 0,1.2,2.2 "$1" "$2" \
            | awk -F'\t' '$2 != $3 {printf "      %-70s %5d -> %5d\n", substr($1, 1, 70), $2, $3}' | head -n 30
    }
    held_diff "$work/held.first" "$work/held.last"
    if ((keep)); then
        echo "  the keeper (pid $keeper_pid):"
        growth "keeper rss" 16 kB "$((max_rss_mb * 1024))"
        growth "keeper fds" 17 "" "$max_fd"
        growth "keeper threads" 18 "" "$max_threads"
        growth "keeper maps" 19 "" "$max_maps"
        held_diff "$work/keeper.first" "$work/keeper.last"
    fi
fi
if [[ -f "$daemon_log" ]]; then
    echo "  daemon log: $(grep -c ' warn: ' "$daemon_log" || true) warning(s), $(grep -c ' fail: ' "$daemon_log" || true) error(s), $(grep -c ' crit: ' "$daemon_log" || true) critical"
    if grep -q 'crit:\|Unhandled exception' "$daemon_log"; then fail+=("critical errors in the daemon log"); fi
    if ((keep)); then
        echo "  sessions resumed after a restart (daemon log): $(grep -c 'resumed after the restart' "$daemon_log" || true); not resumed: $(grep -c 'could not be resumed' "$daemon_log" || true)"
    fi
fi
if ((${#fail[@]})); then
    echo "SOAK FAILED: $(IFS=';'; echo "${fail[*]}")"
    exit 1
fi
echo "soak passed"
exit 0
}
