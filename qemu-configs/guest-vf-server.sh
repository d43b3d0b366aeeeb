#!/usr/bin/env bash
# A QEMU guest on VFs of the vhost-virtio daemon, QEMU as the vhost-user SERVER: QEMU creates and
# listens on ./sockets/vf1.sock … and the daemon, started with --client, connects to it (retrying
# every second, so either side may start first).
#
#   bash scripts/guest/prepare.sh                 # once: QEMU, kernel and initramfs in .cache/guest/
#   bash qemu-configs/guest-vf-server.sh vf1 vf2  # QEMU listens on ./sockets/vf1.sock and vf2.sock
#   bash scripts/run.sh --client                  # in another terminal, from the same folder
#
# server=on,wait=off: QEMU does not wait for a connection before creating the next socket; it
# still waits before running the guest (QEMU 7.2's vhost-user netdev needs its first connection at
# startup). No reconnect= here: that option exists for client sockets only; as the server, QEMU
# simply accepts the daemon again after a restart.
#
# Requirements, whatever the front end:
# - Guest RAM must be a shared memfd (memory-backend-memfd,share=on): the back end maps it.
# - MSI-X workaround: QEMU 7.2 under TCG segfaults (vhost_net_start → msix_set_vector_notifiers)
#   as soon as the guest enables MSI-X on a vhost-user virtio-net device. vectors=0 on the device
#   (legacy INTx) avoids it; so does pci=nomsi on the guest kernel line.
#
# Environment: SOCKET_DIR (./sockets), KERNEL, INITRD (.cache/guest/…), MEM (512M), APPEND.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
socket_dir="${SOCKET_DIR:-./sockets}"
mem="${MEM:-512M}"
[[ $# -gt 0 ]] || set -- vf1
mkdir -p "$socket_dir"

nics=()
i=0
for vf in "$@"; do
    i=$((i + 1))
    # The NIC carries the VF's own MAC (the daemon's 02:56:56:00:00:00 plus the VF number; pf = 0):
    # a VF the owner has not trusted may send only from it.
    n="${vf#vf}"; [[ "$n" =~ ^[0-9]+$ ]] || n=0
    mac="02:56:56:00:00:$(printf %02x "$n")"
    nics+=(-chardev "socket,id=c$i,path=$socket_dir/$vf.sock,server=on,wait=off"
        -netdev "vhost-user,id=n$i,chardev=c$i,queues=1"
        -device "virtio-net-pci,netdev=n$i,mac=$mac,vectors=0")
done

exec qemu-system-x86_64 -accel tcg -machine q35 -cpu max -m "$mem" -nographic -no-reboot \
    -kernel "${KERNEL:-$root/.cache/guest/vmlinuz}" -initrd "${INITRD:-$root/.cache/guest/initramfs.cpio.gz}" \
    -append "${APPEND:-console=ttyS0 panic=-1 quiet}" \
    -object "memory-backend-memfd,id=mem,size=$mem,share=on" -machine memory-backend=mem \
    "${nics[@]}"
