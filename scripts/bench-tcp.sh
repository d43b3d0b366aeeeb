#!/usr/bin/env bash
# TCP throughput between two QEMU (TCG) guests through a vhost-user switch, measured with iperf3:
# guest A (10.0.0.2) runs `iperf3 -s`, guest B (10.0.0.1) runs `iperf3 -c` for --seconds, each on
# one virtio-net NIC of the back end. Back ends, in turn:
#   ours        vhost-virtio serve --vfs 2 (guests on vf1, vf2), checksum and TSO offloads negotiated
#   ours-nooff  the same daemon; QEMU turns every offload off on both NICs (csum=off, guest_tso4=off, ...)
#   ovs         Open vSwitch with DPDK, private instance, NORMAL bridge, two dpdkvhostuserclient
#               ports (QEMU listens; OVS's vhost library enables TSO only on client ports, which
#               get external buffers), other_config:userspace-tso-enable=true, one PMD thread
# Rounds alternate the back ends; the table shows each one's median Gbit/s (receiver side, from the
# client's JSON report) and ours/ovs, then every raw sample. TCG guests are slow and share the
# machine's cores with the back end, so the guests, not the switch, bound these numbers; the
# comparison is between back ends under the same guests.
#
# CPU placement: the back end on CPU 1 (the daemon under taskset; OVS's vswitchd under taskset
# with pmd-cpu-mask=0x2), the guests unpinned.
#
# Usage: scripts/bench-tcp.sh [--backends ours,ours-nooff,ovs] [--rounds 2] [--seconds 10] [--logs DIR]
# Needs root (OVS) and the guest image (scripts/guest/prepare.sh, run here). Everything started is
# stopped and removed on exit, including Ctrl-C.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/bench.sh
source "$root/scripts/lib/bench.sh"   # say, stop_pid, wait_sockets, median
backends="ours,ours-nooff,ovs"
rounds=2
seconds=10
logs=
timeout=60

while [[ $# -gt 0 ]]; do
    case "$1" in
        --backends) backends="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --logs) logs="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "bench-tcp: unknown argument $1" >&2; exit 2 ;;
    esac
done
IFS=, read -r -a backend_list <<<"$backends"

daemon_dll="$root/src/VhostUserVirtio.Daemon/bin/Release/net10.0/vhost-virtio.dll"
ovs_vswitchd=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
mac_a=02:56:56:00:00:01   # the VFs' own MACs: an untrusted VF sends only from its own
mac_b=02:56:56:00:00:02
no_offloads=",csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off"

work="$(mktemp -d /tmp/vuv-tcp.XXXXXX)"
tag="vuvtcp$$"

other_pids=()
cleanup() {
    local pid
    trap - EXIT INT TERM
    for pid in "${other_pids[@]}"; do stop_pid "$pid"; done
    wait 2>/dev/null || true
    if [[ -n "$logs" ]]; then
        mkdir -p "$logs" && find "$work" -name '*.log' -exec cp {} "$logs"/ \; && echo "logs kept in $logs"
    fi
    rm -rf "$work" /var/run/dpdk/"$tag"-*
}
trap cleanup EXIT
trap 'echo; say "interrupted"; exit 130' INT TERM



# ---- guest image: base initramfs + iperf3 archive + a per-guest /test.sh ---------------------
prep="$(bash "$root/scripts/guest/prepare.sh")"
kernel="$(sed -n 's/^GUEST-KERNEL=//p' <<<"$prep")"
base="$(sed -n 's/^GUEST-INITRAMFS=//p' <<<"$prep")"
tools="$(sed -n 's/^GUEST-TOOLS=//p' <<<"$prep")"
[[ -f "$kernel" && -f "$base" && -f "$tools" ]] || { echo "bench-tcp: guest image incomplete:"; echo "$prep"; exit 1; }

# Guest scripts: variables first, then literal shell (quoted heredocs: nothing expands here).
read -r -d '' guest_prologue <<'GUEST' || true
find_if() { for d in /sys/class/net/*; do [ "$(cat $d/address)" = "$1" ] && { echo ${d##*/}; return 0; }; done; return 1; }
n=0; while ! i=$(find_if $mac) && [ $n -lt 300 ]; do n=$((n + 1)); usleep 100000; done
[ -n "$i" ] || { echo "GUEST-ERROR no interface $mac"; exit 2; }
ip addr add $ip/24 dev $i && ip link set $i up
n=0; while [ "$(cat /sys/class/net/$i/carrier)" != 1 ] && [ $n -lt 300 ]; do n=$((n + 1)); usleep 100000; done
GUEST
read -r -d '' server_body <<'GUEST' || true
timeout $((seconds + 240)) iperf3 -s -B $ip -1
echo SERVER-DONE
GUEST
read -r -d '' client_body <<'GUEST' || true
# The server boots alongside: retry until it answers and listens.
n=0; while ! ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1 && [ $n -lt 120 ]; do n=$((n + 1)); done
n=0; rc=1
while [ $rc -ne 0 ] && [ $n -lt 60 ]; do
    timeout $((seconds + 60)) iperf3 -c 10.0.0.2 -B $ip -t $seconds -J >/tmp/iperf.json 2>&1; rc=$?
    [ $rc -eq 0 ] || { n=$((n + 1)); sleep 1; }
done
field() { awk -v sum="\"$1\"" -v key="\"$2\"" 'index($0, sum) { f = 1 } f && index($0, key) { gsub(/[^0-9.]/, ""); print; exit }' /tmp/iperf.json; }
echo "IPERF-RESULT rc=$rc sent=$(field sum_sent bytes) received=$(field sum_received bytes) bps=$(field sum_received bits_per_second) retransmits=$(field sum_sent retransmits)"
[ $rc -eq 0 ] || head -c 1500 /tmp/iperf.json
GUEST
server_script="mac=$mac_a; ip=10.0.0.2; seconds=$seconds
$guest_prologue
$server_body"
client_script="mac=$mac_b; ip=10.0.0.1; seconds=$seconds
$guest_prologue
$client_body"

make_initrd() {   # make_initrd NAME SCRIPT: base + tools + /test.sh, concatenated (4-byte aligned)
    local name="$1" dir="$work/$1.d" out="$work/$1.initrd"
    mkdir -p "$dir"
    printf '%s\n' "$2" >"$dir/test.sh"; chmod 755 "$dir/test.sh"
    cat "$base" >"$out"
    for part in "$tools" ""; do
        while (( $(stat -c %s "$out") % 4 )); do printf '\0' >>"$out"; done
        if [[ -n "$part" ]]; then cat "$part" >>"$out"; else (cd "$dir" && echo test.sh | busybox cpio -o -H newc 2>/dev/null) >>"$out"; fi
    done
}
make_initrd server "$server_script"
make_initrd client "$client_script"

start_guest() {   # start_guest NAME SOCKET MAC DEVICE-OPTIONS: QEMU in the background, console to NAME.log
    local name="$1" sock="$2" mac="$3" opts="$4" chardev="socket,id=c0,path=$2"
    # With $guest_listens, QEMU is the vhost-user server and boots without waiting for the back end.
    ((guest_listens)) && chardev+=",server=on,wait=off"
    qemu-system-x86_64 -accel tcg -machine q35 -cpu max -m 512M -nographic -no-reboot -nic none \
        -kernel "$kernel" -initrd "$work/$name.initrd" -append "console=ttyS0 panic=-1 quiet" \
        -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \
        -chardev "$chardev" -netdev vhost-user,id=n0,chardev=c0,queues=1 \
        -device "virtio-net-pci,netdev=n0,mac=$mac,vectors=0,romfile=$opts" \
        </dev/null >"$work/$name.log" 2>&1 &
    guest_pid=$!; other_pids+=("$guest_pid")
}

# measure SOCK_A SOCK_B DEVICE-OPTIONS: one iperf3 run; sets $measured (Gbit/s) or fails
measured=
guest_listens=0
measure() {
    local sock_a="$1" sock_b="$2" opts="$3" pid_a pid_b end line
    measured=
    start_guest server "$sock_a" "$mac_a" "$opts"; pid_a=$guest_pid
    start_guest client "$sock_b" "$mac_b" "$opts"; pid_b=$guest_pid
    end=$((SECONDS + seconds + 300))
    while ((SECONDS < end)) && kill -0 "$pid_b" 2>/dev/null; do sleep 1; done
    stop_pid "$pid_b"; stop_pid "$pid_a"
    cat "$work/server.log" >>"$work/guests.log"; cat "$work/client.log" >>"$work/guests.log"
    line="$(grep -o 'IPERF-RESULT.*' "$work/client.log" | tail -n 1)"
    say "    $line"
    [[ "$line" == *"rc=0 "* && "$line" != *"bps= "* ]] || { tail -n 20 "$work/client.log" | sed 's/^/    client: /'; return 1; }
    measured="$(sed -n 's/.* bps=\([0-9.]*\).*/\1/p' <<<"$line" | awk '{printf "%.3f", $1 / 1e9}')"
}

# ---- back ends ------------------------------------------------------------------------------
daemon_built=0
bench_ours() {   # bench_ours DEVICE-OPTIONS
    local d="$work/ours" rc=0 pid
    mkdir -p "$d"
    if ((!daemon_built)); then
        say "ours: building the daemon (Release)"
        dotnet build "$root/src/VhostUserVirtio.Daemon/VhostUserVirtio.Daemon.csproj" -c Release \
            --nologo -v quiet --disable-build-servers </dev/null >"$work/build.log" 2>&1 \
            || { tail -n 20 "$work/build.log"; return 1; }
        daemon_built=1
    fi
    taskset -c 1 dotnet "$daemon_dll" serve --socket-dir "$d" --vfs 2 ${OURS_ARGS:-} </dev/null >>"$work/ours.log" 2>&1 &
    pid=$!; other_pids+=("$pid")
    wait_sockets "$pid" "$d/vf1.sock" "$d/vf2.sock" || { say "ours: no sockets ($(tail -n 3 "$work/ours.log" | tr '\n' ' '))"; stop_pid "$pid"; return 1; }
    measure "$d/vf1.sock" "$d/vf2.sock" "$1" || rc=1
    stop_pid "$pid"
    rm -rf "$d"
    return $rc
}

bench_ovs() {
    [[ -x "$ovs_vswitchd" ]] || { say "ovs: $ovs_vswitchd missing (scripts/dpdk/install.sh --ovs)"; return 1; }
    local d="$work/ovs" rc=0 pid pids=()
    mkdir -p "$d/run" "$d/db" "$d/log"
    export OVS_RUNDIR="$d/run" OVS_DBDIR="$d/db" OVS_LOGDIR="$d/log" OVS_SYSCONFDIR="$d/db"
    local db="$d/db/conf.db" remote="unix:$d/run/db.sock"
    local vsctl=(ovs-vsctl --db="$remote" --timeout="$timeout")
    ovsdb-tool create "$db" /usr/share/openvswitch/vswitch.ovsschema
    ovsdb-server "$db" --remote="punix:$d/run/db.sock" --pidfile="$d/run/ovsdb-server.pid" \
        --unixctl="$d/run/ovsdb-server.ctl" --log-file="$d/log/ovsdb-server.log" >/dev/null 2>&1 &
    pid=$!; other_pids+=("$pid"); pids+=("$pid")
    if wait_sockets "$pid" "$d/run/db.sock" && "${vsctl[@]}" --no-wait init &&
        "${vsctl[@]}" --no-wait set Open_vSwitch . other_config:dpdk-init=true other_config:pmd-cpu-mask=0x2 \
            other_config:userspace-tso-enable=true \
            "other_config:dpdk-extra=--no-huge --legacy-mem -m 2048 --no-pci --file-prefix $tag-ovs"; then
        taskset -c 1 "$ovs_vswitchd" "$remote" --pidfile="$d/run/ovs-vswitchd.pid" \
            --unixctl="$d/run/ovs-vswitchd.ctl" --log-file="$d/log/ovs-vswitchd.log" >/dev/null 2>&1 &
        pid=$!; other_pids+=("$pid"); pids+=("$pid")
        if "${vsctl[@]}" add-br br0 -- set bridge br0 datapath_type=netdev \
            -- add-port br0 vf1 -- set Interface vf1 type=dpdkvhostuserclient "options:vhost-server-path=$d/run/vf1.sock" \
            -- add-port br0 vf2 -- set Interface vf2 type=dpdkvhostuserclient "options:vhost-server-path=$d/run/vf2.sock"; then
            say "ovs: $("$ovs_vswitchd" --version | head -n 1), $(grep -o 'Userspace TCP Segmentation Offloading support enabled' "$d/log/ovs-vswitchd.log" | head -n 1 || true)"
            guest_listens=1
            measure "$d/run/vf1.sock" "$d/run/vf2.sock" "" || rc=1
            guest_listens=0
            grep -E "ERR|segmentation|TSO|tso" "$d/log/ovs-vswitchd.log" | grep -v "read message" | tail -n 5 | sed 's/^/    ovs: /' || true
        else
            say "ovs: bridge setup failed"; tail -n 20 "$d/log/ovs-vswitchd.log"; rc=1
        fi
    else
        say "ovs: ovsdb-server did not start"; rc=1
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[$i]}"; done
    mv "$d"/log/*.log "$work"/ 2>/dev/null || true
    rm -rf "$d" /var/run/dpdk/"$tag"-ovs
    return $rc
}

# ---- main -----------------------------------------------------------------------------------
if [[ " ${backend_list[*]} " == *" ovs "* ]]; then bash "$root/scripts/dpdk/install.sh" --ovs >/dev/null; fi
say "TCP benchmark: back ends ${backends}, ${rounds} round(s), iperf3 -t ${seconds} between two TCG guests"
say "placement: back end on CPU 1, guests unpinned ($(nproc) CPUs online)"
declare -A samples=()
for ((round = 1; round <= rounds; round++)); do
    # Alternate the order, so slow drifts in the machine's load hit all back ends alike.
    order=("${backend_list[@]}")
    if ((round % 2 == 0)); then order=(); for ((k = ${#backend_list[@]} - 1; k >= 0; k--)); do order+=("${backend_list[$k]}"); done; fi
    for be in "${order[@]}"; do
        say "round $round: $be"
        case "$be" in
            ours) bench_ours "" || { say "ours: failed"; continue; } ;;
            ours-nooff) bench_ours "$no_offloads" || { say "ours-nooff: failed"; continue; } ;;
            ovs) bench_ovs || { say "ovs: failed"; continue; } ;;
            *) echo "bench-tcp: unknown back end $be" >&2; exit 2 ;;
        esac
        samples[$be]+=" $measured"
        say "$be: $measured Gbit/s"
    done
done

echo
printf '%-12s %10s %8s  %s\n' "back end" "Gbit/s" "samples" "(median of iperf3 receiver throughput)"
for be in "${backend_list[@]}"; do
    # shellcheck disable=SC2086 # one sample per word
    printf '%-12s %10s %8s\n' "$be" "$(printf '%s\n' ${samples[$be]:-} | median)" "$(wc -w <<<"${samples[$be]:-}")"
done
ours_m="$(printf '%s\n' ${samples[ours]:-} | median)"; ovs_m="$(printf '%s\n' ${samples[ovs]:-} | median)"
nooff_m="$(printf '%s\n' ${samples[ours-nooff]:-} | median)"
awk -v a="$ours_m" -v b="$ovs_m" -v c="$nooff_m" 'BEGIN {
    if (b > 0) printf "ours/ovs %.2f\n", a / b
    if (c > 0) printf "ours/ours-nooff %.2f\n", a / c }'
echo "raw samples (Gbit/s):"
for be in "${backend_list[@]}"; do echo "  $be:${samples[$be]:-}"; done
