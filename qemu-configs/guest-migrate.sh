#!/usr/bin/env bash
# Live migration of a guest from one VF of the vhost-virtio daemon to another, QEMU as the
# vhost-user client on both sides. Three terminals, the daemon already running (e.g.
# `bash scripts/run.sh --vfs 3`, sockets in ./sockets):
#
#   bash qemu-configs/guest-migrate.sh source vf1        # the guest, NIC on vf1, MAC 02:56:56:00:00:01
#   bash qemu-configs/guest-migrate.sh destination vf3   # gives vf3 the guest's MAC, then waits for the stream
#   bash qemu-configs/guest-migrate.sh migrate           # moves the guest; prints query-migrate until it ends
#
# The guest keeps its MAC when it moves. A VF sends only from its own MAC and receives only for it
# unless the owner trusts it, so before the destination starts, the owner sets the destination VF's
# MAC to the guest's (`vhost-virtio admin vf 3 set-mac …`, NET_MEMBER_CTRL over the admin queue), as
# a management stack does for a VF it hands a migrating guest. After the move QEMU announces the
# guest (gratuitous ARP from the guest with VIRTIO_NET_F_GUEST_ANNOUNCE, otherwise SEND_RARP to the
# back end) so the switch learns the MAC's new port. QEMU refuses to migrate
# ("Migration disabled: vhost-user backend lacks VHOST_USER_PROTOCOL_F_LOG_SHMFD feature") when
# the back end cannot log dirty pages.
#
# Both QEMUs need the same machine: memory size and backend, kernel, initrd, devices in the same
# order. The console of the guest continues on the destination's terminal once it resumes.
#
# Environment: SOCKET_DIR (./sockets), RUN_DIR (./migration: QMP sockets, migration socket),
# MAC (the guest's; default the source VF's own), KERNEL, INITRD, MEM (512M), APPEND,
# ADMIN (command for owner admin commands; default `bash scripts/run.sh admin`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
socket_dir="${SOCKET_DIR:-./sockets}"
run_dir="${RUN_DIR:-./migration}"
mem="${MEM:-512M}"
mkdir -p "$run_dir"

vf_mac() { local n="${1#vf}"; printf '02:56:56:00:00:%02x' "$n"; }

# One QMP command: greeting, qmp_capabilities, then the command; prints its reply.
qmp() {
    python3 - "$1" "$2" "${3:-}" <<'EOF'
import json, socket, sys
path, command, args = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX); s.connect(path); f = s.makefile("rw")
def call(cmd, arguments=None):
    msg = {"execute": cmd}
    if arguments: msg["arguments"] = arguments
    f.write(json.dumps(msg) + "\n"); f.flush()
    while True:
        reply = json.loads(f.readline())
        if "return" in reply or "error" in reply: return reply
f.readline()  # greeting
call("qmp_capabilities")
print(json.dumps(call(command, json.loads(args) if args else None)))
EOF
}

qemu() { # NAME VF [more QEMU arguments]
    local name="$1" vf="$2"; shift 2
    local mac="${MAC:-$(vf_mac vf1)}"
    exec qemu-system-x86_64 -accel tcg -machine q35 -cpu max -m "$mem" -nographic -no-reboot \
        -kernel "${KERNEL:-$root/.cache/guest/vmlinuz}" -initrd "${INITRD:-$root/.cache/guest/initramfs.cpio.gz}" \
        -append "${APPEND:-console=ttyS0 panic=-1 quiet}" \
        -object "memory-backend-memfd,id=mem,size=$mem,share=on" -machine memory-backend=mem \
        -chardev "socket,id=c0,path=$socket_dir/$vf.sock" \
        -netdev vhost-user,id=n0,chardev=c0,queues=1 \
        -device "virtio-net-pci,netdev=n0,mac=$mac,vectors=0,romfile=" \
        -qmp "unix:$run_dir/$name.qmp,server=on,wait=off" "$@"
}

case "${1:-}" in
    source)
        qemu source "${2:-vf1}" ;;
    destination)
        vf="${2:-vf3}"
        mac="${MAC:-$(vf_mac vf1)}"
        ${ADMIN:-bash "$root/scripts/run.sh" admin} --socket "$socket_dir/pf.sock" vf "${vf#vf}" set-mac "$mac"
        rm -f "$run_dir/migration.sock"
        qemu destination "$vf" -incoming "unix:$run_dir/migration.sock" ;;
    migrate)
        qmp "$run_dir/source.qmp" migrate-set-parameters '{"max-bandwidth": 1073741824}' >/dev/null
        qmp "$run_dir/source.qmp" migrate "{\"uri\": \"unix:$run_dir/migration.sock\"}"
        while sleep 0.2; do
            reply="$(qmp "$run_dir/source.qmp" query-migrate)"
            echo "$reply"
            case "$reply" in *'"completed"'*|*'"failed"'*|*'"cancelled"'*|*'"status": "none"'*) break ;; esac
        done
        qmp "$run_dir/destination.qmp" query-status ;;
    *)
        echo "usage: $0 source [vfN] | destination [vfN] | migrate" >&2
        exit 2 ;;
esac
