#!/usr/bin/env bash
# A QEMU guest on VFs of the vhost-virtio daemon, QEMU as the vhost-user CLIENT (the default):
# the daemon listens on ./sockets/vf1.sock … vfN.sock (pf.sock for the PF) and QEMU connects.
#
#   bash scripts/guest/prepare.sh                 # once: QEMU, kernel and initramfs in .cache/guest/
#   bash qemu-configs/guest-vf-client.sh          # one NIC on ./sockets/vf1.sock
#   bash qemu-configs/guest-vf-client.sh vf1 vf2  # one NIC per VF, MACs 52:54:00:00:00:01, :02, …
#
# Start the daemon first: QEMU 7.2 blocks at startup until every vhost-user socket is connected.
# reconnect=1 makes QEMU retry every second when the connection drops, so the daemon can be
# restarted under a running guest (the link goes down, then up again).
#
# Requirements, whatever the front end:
# - Guest RAM must be a shared memfd (memory-backend-memfd,share=on): the back end maps it.
# - MSI-X workaround: QEMU 7.2 under TCG segfaults (vhost_net_start → msix_set_vector_notifiers)
#   as soon as the guest enables MSI-X on a vhost-user virtio-net device. vectors=0 on the device
#   (legacy INTx) avoids it; so does pci=nomsi on the guest kernel line. With KVM the same applies
#   to QEMU 7.2; newer QEMU may not need it.
#
# Environment: SOCKET_DIR (./sockets), KERNEL, INITRD (.cache/guest/…), MEM (512M), APPEND.
# For a disk image instead of -kernel/-initrd, replace those options with -drive file=IMG,if=virtio.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
socket_dir="${SOCKET_DIR:-./sockets}"
mem="${MEM:-512M}"
[[ $# -gt 0 ]] || set -- vf1

nics=()
i=0
for vf in "$@"; do
    i=$((i + 1))
    # The NIC carries the VF's own MAC (the daemon's 02:56:56:00:00:00 plus the VF number; pf = 0):
    # a VF the owner has not trusted may send only from it.
    n="${vf#vf}"; [[ "$n" =~ ^[0-9]+$ ]] || n=0
    mac="02:56:56:00:00:$(printf %02x "$n")"
    nics+=(-chardev "socket,id=c$i,path=$socket_dir/$vf.sock,reconnect=1"
        -netdev "vhost-user,id=n$i,chardev=c$i,queues=1"
        -device "virtio-net-pci,netdev=n$i,mac=$mac,vectors=0")
done

exec qemu-system-x86_64 -accel tcg -machine q35 -cpu max -m "$mem" -nographic -no-reboot \
    -kernel "${KERNEL:-$root/.cache/guest/vmlinuz}" -initrd "${INITRD:-$root/.cache/guest/initramfs.cpio.gz}" \
    -append "${APPEND:-console=ttyS0 panic=-1 quiet}" \
    -object "memory-backend-memfd,id=mem,size=$mem,share=on" -machine memory-backend=mem \
    "${nics[@]}"
