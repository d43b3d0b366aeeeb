#!/usr/bin/env bash
# PVP ("physical-virtual-physical") loop benchmark of vhost-user switches, with no VM:
# one DPDK testpmd (the front end, two virtio-user ports) in `mac` forwarding mode, each port's
# eth-peer set to the other port's MAC, started with `start tx_first`, so packets circle
#     port 0 -> back end (vf1 -> vf2) -> port 1 -> back end (vf2 -> vf1) -> port 0 -> ...
# Back ends, in turn:
#   dpdk  DPDK's vhost PMD: a second testpmd, two net_vhost ports in io forwarding (a plain wire)
#   ovs   Open vSwitch with DPDK (openvswitch-switch-dpdk), private instance, NORMAL (learning)
#         bridge with two dpdkvhostuser ports, one PMD thread
#   ours  vhost-virtio serve --socket-dir DIR --vfs 2 --allow-unsealed-memory (learning switch,
#         one worker core; the option because testpmd's --no-huge memfd cannot be sealed)
# For each back end and packet size it prints the median of several samples of the packets per
# second the front end receives (port 0 + port 1, testpmd's own Rx-pps), then ours/dpdk, ours/ovs.
#
# CPU pinning (the machine has 2 cores; the front end and the back end each get one):
#   front end: EAL main lcore and its one forwarding lcore both on CPU 0 (--lcores 0@0,1@0; the
#              main lcore only blocks reading commands)
#   dpdk:      main and forwarding lcore on CPU 1 (--lcores 0@1,1@1)
#   ovs:       ovs-vswitchd under `taskset -c 1`, pmd-cpu-mask=0x2 (the PMD thread on CPU 1)
#   ours:      the daemon under `taskset -c 1`
# So each side has one busy core; anything else running on the machine skews the numbers.
#
# Queue pairs (--queue-pairs 1,2): each count is a separate row. With N pairs the front end opens N
# queues per port (virtio-user queues=N, --rxq/--txq N; still one forwarding lcore on CPU 0), and
# each back end serves them with N threads placed on the back-end CPUs (--be-cpus, default 1),
# round-robin, the same for all: dpdk N forwarding lcores (net_vhost queues=N), ours --queue-pairs N
# --workers N --cpus <same CPUs> (worker i serves queue pair i), ovs n_rxq=N with one PMD thread per
# back-end CPU (pmd-cpu-mask). On a 2-core machine the N back-end threads share CPU 1.
#
# Usage: scripts/bench-pvp.sh [--backends dpdk,ovs,ours] [--sizes 64,1518] [--samples 5]
#                             [--interval 2] [--warmup 5] [--bursts 16] [--rounds 1] [--logs DIR]
#                             [--queue-pairs 1,2] [--be-cpus 1] [--rings split,packed]
# --rings: the virtqueue layouts the front end drives (virtio-user packed_vq=0 or 1); every back
# end is measured with each, and each table row says which.
# Needs root (DPDK, OVS). Installs DPDK and OVS with scripts/dpdk/install.sh --ovs if missing.
# Everything (processes, sockets, OVS database and logs, DPDK runtime folders) is removed on exit,
# including Ctrl-C.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/bench.sh
source "$root/scripts/lib/bench.sh"   # say, stop_pid, wait_sockets, median
# shellcheck source=lib/testpmd.sh
source "$root/scripts/lib/testpmd.sh" # wait_log, pmd_cmd, pmd_link_up, pmd_quit
backends="dpdk,ovs,ours"
sizes="64,1518"
samples=5
interval=2
warmup=5       # seconds of looping before the first sample (OVS settles after its ports come up)
bursts=16      # `start tx_first N`: N bursts of 32 packets per port seed the loop (more in flight, bigger batches)
rounds=1       # --rounds N: repeat the whole sequence N times, alternating back ends
rings=split    # --rings split,packed: virtqueue layouts (testpmd's virtio-user packed_vq)
logs=          # --logs DIR: keep every process's log there (they are deleted otherwise)
timeout=60     # seconds to wait for any one thing (startup, link up, a command's output)
queue_pairs=1  # --queue-pairs 1,2: one row per count
be_cpus=1      # --be-cpus LIST: the back end's CPUs (its threads are placed on them round-robin)

while [[ $# -gt 0 ]]; do
    case "$1" in
        --backends) backends="$2"; shift 2 ;;
        --sizes) sizes="$2"; shift 2 ;;
        --samples) samples="$2"; shift 2 ;;
        --interval) interval="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --bursts) bursts="$2"; shift 2 ;;
        --logs) logs="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --queue-pairs) queue_pairs="$2"; shift 2 ;;
        --be-cpus) be_cpus="$2"; shift 2 ;;
        --rings) rings="$2"; shift 2 ;;
        -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
        *) echo "bench-pvp: unknown argument $1" >&2; exit 2 ;;
    esac
done
IFS=, read -r -a backend_list <<<"$backends"
IFS=, read -r -a size_list <<<"$sizes"
IFS=, read -r -a qp_list <<<"$queue_pairs"
# The back end's CPUs as a list of numbers (ranges expanded), for placing its threads.
be_cpu_list=()
IFS=, read -r -a _parts <<<"$be_cpus"
for _p in "${_parts[@]}"; do
    if [[ "$_p" == *-* ]]; then for ((_c = ${_p%-*}; _c <= ${_p#*-}; _c++)); do be_cpu_list+=("$_c"); done
    else be_cpu_list+=("$_p"); fi
done
be_cpu() { echo "${be_cpu_list[$(($1 % ${#be_cpu_list[@]}))]}"; }   # be_cpu I: the CPU of back-end thread I
be_mask() { local m=0 c; for c in "${be_cpu_list[@]}"; do m=$((m | (1 << c))); done; printf '0x%x' "$m"; }
qp=1           # queue pairs of the measurement running now
IFS=, read -r -a ring_list <<<"$rings"
for ring in "${ring_list[@]}"; do
    [[ "$ring" == split || "$ring" == packed ]] || { echo "bench-pvp: unknown ring layout $ring" >&2; exit 2; }
done
ring=split     # the layout being measured (set by the main loop)

daemon_dll="$root/src/VhostUserVirtio.Daemon/bin/Release/net10.0/vhost-virtio.dll"
ovs_vswitchd=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
# Port 0 is on vf1.sock, port 1 on vf2.sock: each uses its VF's own MAC (ours: MacBase 02:56:56:00:00:00
# plus the VF number), since an untrusted VF may send only from its own MAC (spoof check).
mac0=02:56:56:00:00:01
mac1=02:56:56:00:00:02

work="$(mktemp -d /tmp/vuv-pvp.XXXXXX)"
tag="vuvpvp$$"            # unique DPDK --file-prefix stem for this run
dpdk_run=/var/run/dpdk
[[ $(id -u) -eq 0 ]] || dpdk_run="${XDG_RUNTIME_DIR:-/tmp}/dpdk"


# ---- process bookkeeping and cleanup --------------------------------------------------------
declare -A pmd_fd=() pmd_pid=() pmd_log=()
other_pids=()


cleanup() {
    local name pid
    trap - EXIT INT TERM
    for name in "${!pmd_pid[@]}"; do pmd_quit "$name" || true; done
    for pid in "${other_pids[@]}"; do stop_pid "$pid"; done
    wait 2>/dev/null || true
    if [[ -n "$logs" ]]; then
        mkdir -p "$logs" && find "$work" -name '*.log' -exec cp {} "$logs"/ \; && echo "logs kept in $logs"
    fi
    rm -rf "$work" "$dpdk_run/$tag"-*
}
trap cleanup EXIT
trap 'echo; say "interrupted"; exit 130' INT TERM

# ---- interactive testpmd through a FIFO -----------------------------------------------------
# pmd_start NAME EAL-ARGS... -- APP-ARGS...   (adds --file-prefix, -i; waits for the prompt)
pmd_start() {
    local name="$1"; shift
    local fifo="$work/$name.in" log="$work/$name.log" fd
    rm -f "$fifo"; mkfifo "$fifo"; : >"$log"
    exec {fd}<>"$fifo"   # read-write: never blocks, and testpmd never sees end of input
    # stdbuf: testpmd's stdio output would otherwise sit in a block buffer (stdout is a file).
    stdbuf -oL -eL dpdk-testpmd --file-prefix "$tag-$name" "$@" -i <"$fifo" >"$log" 2>&1 &
    pmd_pid[$name]=$!; pmd_fd[$name]=$fd; pmd_log[$name]=$log
    wait_log "$name" 0 'testpmd> ' || { say "$name: testpmd did not start:"; tail -n 15 "$log" | sed 's/^/    /'; return 1; }
    # testpmd carries on without a vdev that failed to probe (virtio-user: nobody listening).
    if grep -qE 'failed to initialize .* device|No probed ethernet devices' "$log"; then
        say "$name: a port failed to probe:"; grep -E 'virtio_user|vhost|probe' "$log" | head -n 5 | sed 's/^/    /'; return 1
    fi
}




# ---- one measurement: front end on SOCK0/SOCK1, packet size SIZE; sets $measured (samples) ------
# (Not run in $(...): a subshell would hide the front end's pid from the cleanup trap.)
measured=
measure() {
    local sock0="$1" sock1="$2" size="$3" out pps i rx_a rx_b values=() packed_vq=0
    measured=
    [[ "$ring" == packed ]] && packed_vq=1
    # --mbuf-size=2176 (the default, written out): 2048 bytes of data room after the 128-byte
    # headroom. --mbuf-size=2048 fits 1518-byte frames too, but made the 1518 B loop 3-5x slower here.
    pmd_start fe --lcores 0@0,1@0 --main-lcore 0 --no-huge -m 1024 --no-pci \
        --vdev "net_virtio_user0,path=$sock0,queues=$qp,mac=$mac0,packed_vq=$packed_vq" \
        --vdev "net_virtio_user1,path=$sock1,queues=$qp,mac=$mac1,packed_vq=$packed_vq" -- \
        --nb-cores=1 --rxq="$qp" --txq="$qp" --total-num-mbufs=32768 --mbuf-size=2176 --forward-mode=mac \
        --txpkts="$size" --eth-peer=0,$mac1 --eth-peer=1,$mac0 || { pmd_quit fe; return 1; }
    if ! pmd_link_up fe 0 || ! pmd_link_up fe 1; then
        say "front end ports did not come up"; pmd_quit fe; return 1
    fi
    # The loop holds only the packets tx_first seeds: if the back end drops them (a port it has
    # not finished setting up), nothing flows. Check, and seed again (a few times) if so.
    for ((i = 1; ; i++)); do
        sleep 1   # the back end may still be enabling its queues after our link came up
        pmd_cmd fe "start tx_first $bursts" >/dev/null || { pmd_quit fe; return 1; }
        sleep "$warmup"
        rx_a="$(rx_total)"; sleep 1; rx_b="$(rx_total)"
        ((rx_b > rx_a)) && break
        if ((i == 3)); then say "no packets flow (RX-packets $rx_b)"; pmd_quit fe; return 1; fi
        say "    nothing flowing after tx_first; seeding again"
        pmd_cmd fe stop >/dev/null || true
    done
    pmd_cmd fe "show port stats all" >/dev/null   # baseline for testpmd's "since last show" rates
    for ((i = 1; i <= samples; i++)); do
        sleep "$interval"
        out="$(pmd_cmd fe "show port stats all")" || { pmd_quit fe; return 1; }
        pps="$(awk '/NIC statistics for port/ {p = $6} /Rx-pps:/ {rx[p] = $2} END {print rx[0] + rx[1]}' <<<"$out")"
        values+=("$pps")
        say "    sample $i: $(fmt "$pps")pps"
    done
    pmd_cmd fe stop >/dev/null || true
    pmd_quit fe
    measured="${values[*]}"
}

rx_total() {   # RX-packets of the front end's ports 0 + 1
    pmd_cmd fe "show port stats all" | awk '/RX-packets:/ {n += $2} END {print n + 0}'
}

fmt() { awk -v v="$1" 'BEGIN {printf "%.2f M", v / 1e6}'; }

declare -A result=() all_samples=()
run_sizes() {   # run_sizes BACKEND SOCK0 SOCK1
    local be="$1" size key
    for size in "${size_list[@]}"; do
        say "$be: ${size}-byte packets, $ring ring, ${qp} queue pair(s) (warm-up ${warmup} s, ${samples} x ${interval} s)"
        key="$be/$ring/$size/$qp"
        if measure "$2" "$3" "$size"; then
            all_samples[$key]+=" $measured"
            # shellcheck disable=SC2086 # one sample per word
            say "$be: ${size} B $ring ${qp} qp median $(fmt "$(printf '%s\n' $measured | median)")pps"
        else
            say "$be: ${size} B $ring ${qp} qp failed"; return 1
        fi
    done
}

# ---- back ends ------------------------------------------------------------------------------
bench_dpdk() {
    local d="$work/dpdk" lcores i; mkdir -p "$d"
    # Main lcore on the first back-end CPU; forwarding lcore i on back-end CPU i (round-robin).
    lcores="0@$(be_cpu 0)"; for ((i = 1; i <= qp; i++)); do lcores+=",$i@$(be_cpu $((i - 1)))"; done
    pmd_start be --lcores "$lcores" --main-lcore 0 --no-huge -m 1024 --no-pci \
        --vdev "net_vhost0,iface=$d/vf1.sock,queues=$qp" --vdev "net_vhost1,iface=$d/vf2.sock,queues=$qp" -- \
        --nb-cores="$qp" --rxq="$qp" --txq="$qp" --total-num-mbufs=32768 --forward-mode=io || { pmd_quit be; return 1; }
    pmd_cmd be start >/dev/null || { pmd_quit be; return 1; }
    local rc=0
    run_sizes dpdk "$d/vf1.sock" "$d/vf2.sock" || rc=1
    pmd_quit be
    return $rc
}

bench_ovs() {
    [[ -x "$ovs_vswitchd" ]] || { say "ovs: $ovs_vswitchd missing"; return 1; }
    local d="$work/ovs" rc=0
    ovs_pids=()
    ovs_up "$d" && run_sizes ovs "$d/run/vf1" "$d/run/vf2" || rc=1
    # Stop this instance now (each round starts a fresh one); keep its logs for --logs.
    for pid in "${ovs_pids[@]}"; do stop_pid "$pid"; done
    mv "$d"/log/*.log "$work"/ 2>/dev/null || true
    rm -rf "$d" "${dpdk_run:?}/$tag-ovs"
    return $rc
}

ovs_up() {   # ovs_up DIR: private ovsdb-server + ovs-vswitchd-dpdk, bridge br0 with vf1, vf2
    local d="$1" pid
    mkdir -p "$d/run" "$d/db" "$d/log"
    # Private instance: ovs-vsctl and the vhost sockets follow these instead of /var/run/openvswitch.
    export OVS_RUNDIR="$d/run" OVS_DBDIR="$d/db" OVS_LOGDIR="$d/log" OVS_SYSCONFDIR="$d/db"
    local db="$d/db/conf.db" remote="unix:$d/run/db.sock"
    local vsctl=(ovs-vsctl --db="$remote" --timeout="$timeout")
    ovsdb-tool create "$db" /usr/share/openvswitch/vswitch.ovsschema || return 1
    ovsdb-server "$db" --remote="punix:$d/run/db.sock" --pidfile="$d/run/ovsdb-server.pid" \
        --unixctl="$d/run/ovsdb-server.ctl" --log-file="$d/log/ovsdb-server.log" >/dev/null 2>&1 &
    pid=$!; other_pids+=("$pid"); ovs_pids+=("$pid")
    wait_sockets "$pid" "$d/run/db.sock" || { say "ovs: ovsdb-server did not start"; return 1; }
    "${vsctl[@]}" --no-wait init || return 1
    # One PMD thread on CPU 1; memory as for testpmd (memfd-backed, no hugepages).
    "${vsctl[@]}" --no-wait set Open_vSwitch . other_config:dpdk-init=true other_config:pmd-cpu-mask="$(be_mask)" \
        "other_config:dpdk-extra=--no-huge --legacy-mem -m 2048 --no-pci --file-prefix $tag-ovs" || return 1
    taskset -c "$be_cpus" "$ovs_vswitchd" "$remote" --pidfile="$d/run/ovs-vswitchd.pid" \
        --unixctl="$d/run/ovs-vswitchd.ctl" --log-file="$d/log/ovs-vswitchd.log" >/dev/null 2>&1 &
    pid=$!; other_pids+=("$pid"); ovs_pids+=("$pid")
    # A new netdev bridge has the single flow actions=NORMAL: a MAC-learning switch.
    "${vsctl[@]}" add-br br0 -- set bridge br0 datapath_type=netdev \
        -- add-port br0 vf1 -- set Interface vf1 type=dpdkvhostuser options:n_rxq="$qp" \
        -- add-port br0 vf2 -- set Interface vf2 type=dpdkvhostuser options:n_rxq="$qp" \
        || { say "ovs: bridge setup failed"; tail -n 20 "$d/log/ovs-vswitchd.log"; return 1; }
    wait_sockets "$pid" "$d/run/vf1" "$d/run/vf2" \
        || { say "ovs: vhost sockets missing"; tail -n 20 "$d/log/ovs-vswitchd.log"; return 1; }
    say "ovs: $("$ovs_vswitchd" --version | head -n 1), flows: $(ovs-ofctl dump-flows br0 2>/dev/null | grep -c actions=NORMAL) NORMAL"
}

daemon_built=0
bench_ours() {
    local d="$work/ours" rc=0 pid
    mkdir -p "$d"
    if ((!daemon_built)); then
        say "ours: building the daemon (Release)"
        dotnet build "$root/src/VhostUserVirtio.Daemon/VhostUserVirtio.Daemon.csproj" -c Release \
            --nologo -v quiet --disable-build-servers </dev/null >"$work/build.log" 2>&1 \
            || { tail -n 20 "$work/build.log"; return 1; }
        daemon_built=1
    fi
    # The whole daemon on the back-end CPUs (CPU 1): the front end has CPU 0. Worker i serves
    # queue pair i, pinned to back-end CPU i as DPDK's forwarding lcore i is.
    # --allow-unsealed-memory: testpmd's --no-huge memory is a memfd that cannot be sealed.
    # OURS_ARGS: extra daemon options to try (e.g. --poll-us 200).
    local cpus i; cpus="$(be_cpu 0)"; for ((i = 1; i < qp; i++)); do cpus+=",$(be_cpu $i)"; done
    taskset -c "$be_cpus" dotnet "$daemon_dll" serve --socket-dir "$d" --vfs 2 --allow-unsealed-memory \
        --queue-pairs "$qp" --workers "$qp" --cpus "$cpus" ${OURS_ARGS:-} </dev/null >>"$work/ours.log" 2>&1 &
    pid=$!; other_pids+=("$pid")
    if ! wait_sockets "$pid" "$d/vf1.sock" "$d/vf2.sock"; then
        # Today's daemon has no net devices: it rejects --vfs (or never creates the sockets).
        say "ours: no vf1.sock/vf2.sock (daemon: $(tail -n 3 "$work/ours.log" | tr '\n' ' '))"
        stop_pid "$pid"; return 1
    fi
    run_sizes ours "$d/vf1.sock" "$d/vf2.sock" || rc=1
    stop_pid "$pid"
    return $rc
}

# ---- main -----------------------------------------------------------------------------------
bash "$root/scripts/dpdk/install.sh" --ovs >/dev/null
say "PVP benchmark: back ends ${backends}, sizes ${sizes} B, rings ${rings}, ${rounds} round(s) of ${samples} x ${interval} s samples after ${warmup} s warm-up"
say "pinning: front end on CPU 0 (main + 1 forwarding lcore), back end on CPU(s) $be_cpus ($(nproc) CPUs online); queue pairs: $queue_pairs"
say "pps = packets/s received by the front end on port 0 + port 1 (testpmd Rx-pps) = the back end's forwarding rate"

declare -A status=()
for ((round = 1; round <= rounds; round++)); do
    # Rounds alternate the back ends, so slow drifts in the machine's load hit all of them alike.
    ((rounds == 1)) || say "##### round $round of $rounds"
    for ring in "${ring_list[@]}"; do
        for qp in "${qp_list[@]}"; do
            for be in "${backend_list[@]}"; do
                case "$be" in
                    dpdk|ovs|ours) ;;
                    *) say "unknown back end $be"; continue ;;
                esac
                [[ "${status[$be/$ring/$qp]:-}" == unavailable ]] && continue
                say "=== $be, $ring ring, $qp queue pair(s) ==="
                if "bench_$be"; then status[$be/$ring/$qp]=ok; else status[$be/$ring/$qp]=unavailable; say "$be ($ring, $qp qp): unavailable"; fi
                pmd_quit fe 2>/dev/null || true   # whatever a failed run left
                pmd_quit be 2>/dev/null || true
            done
        done
    done
done

for key in "${!all_samples[@]}"; do
    # shellcheck disable=SC2086 # one sample per word
    result[$key]="$(printf '%s\n' ${all_samples[$key]} | median)"
done
ratio() { [[ -n "${result[$1]:-}" && -n "${result[$2]:-}" ]] && awk -v a="${result[$1]}" -v b="${result[$2]}" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}' || echo n/a; }

echo
echo "PVP loop: median packets/s over $rounds round(s) x $samples samples; front end pinned to CPU 0, back end to CPU(s) $be_cpus"
printf '%-8s%-6s%-5s' "ring" "size" "qp"; for be in "${backend_list[@]}"; do printf '%14s' "$be"; done; printf '%12s%12s\n' "ours/dpdk" "ours/ovs"
for ring in "${ring_list[@]}"; do
    for qp in "${qp_list[@]}"; do
        for size in "${size_list[@]}"; do
            printf '%-8s%-6s%-5s' "$ring" "${size}B" "$qp"
            for be in "${backend_list[@]}"; do
                if [[ -n "${result[$be/$ring/$size/$qp]:-}" ]]; then printf '%14s' "$(fmt "${result[$be/$ring/$size/$qp]}")pps"; else printf '%14s' "unavailable"; fi
            done
            printf '%12s%12s\n' "$(ratio "ours/$ring/$size/$qp" "dpdk/$ring/$size/$qp")" "$(ratio "ours/$ring/$size/$qp" "ovs/$ring/$size/$qp")"
        done
    done
done
for key in $(printf '%s\n' "${!all_samples[@]}" | sort); do
    # shellcheck disable=SC2086
    echo "  $key samples (Mpps): $(printf '%s\n' ${all_samples[$key]} | awk '{printf "%.2f ", $1 / 1e6}')"
done
for ring in "${ring_list[@]}"; do
    for qp in "${qp_list[@]}"; do
        for be in "${backend_list[@]}"; do [[ "${status[$be/$ring/$qp]:-}" == ok ]] || echo "$be ($ring, $qp qp): unavailable"; done
    done
done
