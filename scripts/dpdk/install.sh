#!/usr/bin/env bash
# Installs DPDK 22.11 from Debian 12 (testpmd plus the vhost and virtio-user PMDs) for the
# real-client tests. Idempotent: does nothing when dpdk-testpmd is already on PATH.
#   scripts/dpdk/install.sh          # DPDK only (what the tests need)
#   scripts/dpdk/install.sh --ovs    # also Open vSwitch with DPDK (only scripts/bench-pvp.sh needs it)
set -euo pipefail

with_ovs=0
for arg in "$@"; do
    case "$arg" in
        --ovs) with_ovs=1 ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "install.sh: need root (or sudo) to install packages" >&2; exit 1; }
    sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

updated=0
apt_install() {
    # apt-get update only when something is really installed: keeps re-runs offline and fast.
    if [[ $updated -eq 0 ]]; then
        "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
        updated=1
    fi
    # Other sessions on a shared machine may hold the dpkg lock: wait for it rather than fail,
    # and retry once (a concurrent apt run has been seen to break an unpack half way).
    local apt=("${sudo_cmd[@]}" apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "$@")
    "${apt[@]}" || { echo "install.sh: apt-get failed; retrying once" >&2; sleep 5; "${apt[@]}"; }
}

if command -v dpdk-testpmd >/dev/null 2>&1; then
    echo "install.sh: dpdk-testpmd present ($(command -v dpdk-testpmd))"
else
    # testpmd is in dpdk-dev on bookworm; without recommends the PMDs must be named explicitly.
    apt_install dpdk dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
fi

if [[ $with_ovs -eq 1 ]]; then
    bash "$(dirname "${BASH_SOURCE[0]}")/install-ovs.sh"
fi
