#!/usr/bin/env bash
# Installs Open vSwitch with DPDK (Debian 12: openvswitch-switch-dpdk, OVS 3.1 on DPDK 22.11) for
# scripts/bench-pvp.sh. Not needed by the tests. Idempotent.
#
# The package pulls in openvswitch-switch, whose maintainer scripts enable and start the system
# ovsdb-server/ovs-vswitchd (systemd units, or /etc/init.d/openvswitch-switch). The benchmark runs
# its own private OVS (own DB, run and log folders), so a system instance is only noise: it would
# poll, and compete for the machine's two cores. We therefore stop and disable it after installing.
# (In containers /usr/sbin/policy-rc.d usually already prevents the start.)
set -euo pipefail

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-ovs.sh: need root (or sudo)" >&2; exit 1; }
    sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

bash "$(dirname "${BASH_SOURCE[0]}")/install.sh"   # DPDK first (testpmd is the front end)

if [[ -x /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk ]]; then
    echo "install-ovs.sh: ovs-vswitchd-dpdk present"
else
    "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
    apt=("${sudo_cmd[@]}" apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends openvswitch-switch-dpdk)
    "${apt[@]}" || { echo "install-ovs.sh: apt-get failed; retrying once" >&2; sleep 5; "${apt[@]}"; }
fi

# Keep the system instance down (and down after reboots). Harmless when it is not running.
if [[ -d /run/systemd/system ]]; then
    "${sudo_cmd[@]}" systemctl disable --now openvswitch-switch.service ovs-vswitchd.service ovsdb-server.service >/dev/null 2>&1 || true
elif [[ -x /etc/init.d/openvswitch-switch ]]; then
    "${sudo_cmd[@]}" /etc/init.d/openvswitch-switch stop >/dev/null 2>&1 || true
fi
if pgrep -x ovs-vswitchd >/dev/null || pgrep -x ovsdb-server >/dev/null; then
    echo "install-ovs.sh: warning: an ovsdb-server/ovs-vswitchd is still running (not started by us; left alone)" >&2
fi
