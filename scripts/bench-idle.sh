#!/usr/bin/env bash
# Idle cost: the daemon with N VFs, each attached to a booted, quiet QEMU guest (NIC up, no traffic);
# prints the daemon's CPU use over a window, from /proc/PID/stat (user + system ticks).
#   scripts/bench-idle.sh [N=8] [WINDOW_SECONDS=30]
# Needs the guest image (bash scripts/guest/prepare.sh) and python3 (to pack the guest's script).
# Everything it starts is stopped on exit, including Ctrl-C.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
n="${1:-8}" window="${2:-30}"
work="$(mktemp -d /tmp/vuv-idle-XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

dotnet build "$root/src/VhostUserVirtio.Daemon" -c Release --nologo -v quiet >/dev/null
daemon="$root/src/VhostUserVirtio.Daemon/bin/Release/net10.0/vhost-virtio.dll"
dotnet "$daemon" serve --socket-dir "$work/sockets" --vfs "$n" --log-level warning > "$work/daemon.log" 2>&1 &
daemon_pid=$!
pids+=("$daemon_pid")
for _ in $(seq 1 600); do [[ -S "$work/sockets/vf$n.sock" ]] && break; sleep 0.1; done

# The guest's /test.sh, appended to the initramfs as a second cpio archive: bring every NIC up, stay quiet.
python3 - "$work/extra.cpio" <<'PY'
import sys
script = b"for i in /sys/class/net/eth*; do ip link set ${i##*/} up; done\necho GUEST-IDLE\nsleep 3600\n"
def entry(name, data, mode):
    name = name.encode() + b"\0"
    hdr = b"070701" + b"".join(b"%08X" % v for v in (1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name), 0))
    out = hdr + name
    out += b"\0" * ((4 - len(out) % 4) % 4)
    out += data + b"\0" * ((4 - len(data) % 4) % 4)
    return out
blob = entry("test.sh", script, 0o100755) + entry("TRAILER!!!", b"", 0)
open(sys.argv[1], "wb").write(blob)
PY
cat "$root/.cache/guest/initramfs.cpio.gz" > "$work/initrd"
gzip -c "$work/extra.cpio" >> "$work/initrd"

for vf in $(seq 1 "$n"); do
    mac="02:56:56:00:00:$(printf %02x "$vf")"
    qemu-system-x86_64 -accel tcg -machine q35 -cpu max -m 128M -nographic -no-reboot \
        -kernel "$root/.cache/guest/vmlinuz" -initrd "$work/initrd" -append "console=ttyS0 panic=-1 quiet" \
        -object "memory-backend-memfd,id=mem,size=128M,share=on" -machine memory-backend=mem \
        -chardev "socket,id=c0,path=$work/sockets/vf$vf.sock" -netdev vhost-user,id=n0,chardev=c0,queues=1 \
        -device "virtio-net-pci,netdev=n0,mac=$mac,vectors=0" < /dev/null > "$work/guest$vf.log" 2>&1 &
    pids+=("$!")
done
echo "booting $n guests..." >&2
for _ in $(seq 1 600); do
    idle=$( (grep -l GUEST-IDLE "$work"/guest*.log 2>/dev/null || true) | wc -l)
    [[ $idle -ge $n ]] && break
    sleep 1
done
echo "$idle of $n guests idle; settling 10 s" >&2
sleep 10
ticks() { awk '{print $14 + $15}' "/proc/$daemon_pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks); s0=$(date +%s.%N)
sleep "$window"
t1=$(ticks); s1=$(date +%s.%N)
awk -v t="$((t1 - t0))" -v hz="$hz" -v s0="$s0" -v s1="$s1" -v n="$n" -v idle="$idle" \
    'BEGIN { printf "idle daemon, %d VFs with %d quiet guests attached: %.2f%% of one core over %.0f s\n", n, idle, 100 * t / hz / (s1 - s0), s1 - s0 }'
