#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine for VhostUserVirtio. Safe to run again.
#   bash scripts/setup.sh           what building and running the daemon needs: the .NET 10 SDK
#                                   (expected on PATH, not installed here) and the NuGet packages,
#                                   which `dotnet restore` fetches into the user's NuGet cache
#   bash scripts/setup.sh --tests   that, plus what the tests need (scripts/test.sh runs this):
# the guest tests need QEMU and a guest kernel and initramfs: scripts/guest/prepare.sh installs and
# builds them (as root when packages are missing; cached in .cache/guest/ afterwards). The DPDK
# tests need dpdk-testpmd, which scripts/dpdk/install.sh installs from Debian packages.
set -euo pipefail
tests=
case "${1:-}" in
    "") ;;
    --tests) tests=yes ;;
    *) echo "setup: error: unknown argument '$1' (usage: bash scripts/setup.sh [--tests])" >&2; exit 2 ;;
esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

if ! command -v dotnet >/dev/null 2>&1; then
    echo "setup: error: 'dotnet' is not on PATH. Install the .NET 10 SDK (https://dot.net) and run this again." >&2
    exit 1
fi
if ! dotnet --list-sdks | grep -q '^10\.'; then
    echo "setup: error: no .NET 10 SDK found; 'dotnet --list-sdks' shows:" >&2
    dotnet --list-sdks >&2 || true
    exit 1
fi
echo "setup: using .NET SDK $(dotnet --version) at $(command -v dotnet)"

# --disable-build-servers: leave no MSBuild node behind holding the caller's output pipe (CI).
dotnet restore VhostUserVirtio.sln --disable-build-servers </dev/null
if [ -z "$tests" ]; then
    echo "setup: done (the daemon's needs; 'bash scripts/setup.sh --tests' adds the tests' own)"
    exit 0
fi

# DPDK (testpmd, vhost and virtio-user PMDs) for the tests that drive real DPDK front and back ends.
# install.sh does nothing when testpmd is already there. In CI a failure is fatal; elsewhere the
# DPDK tests will try again themselves (TestPmd.EnsureInstalled) and fail with the reason.
if ! bash scripts/dpdk/install.sh </dev/null; then
    if [[ -n "${CI:-}" ]]; then
        echo "setup: error: DPDK install failed" >&2
        exit 1
    fi
    echo "setup: warning: DPDK install failed; the DPDK tests will fail" >&2
fi

# Fuzzing (scripts/fuzz.sh, smoke-run by scripts/test.sh): AFL++ from Debian, SharpFuzz's instrumenter as a local tool.
if ! command -v afl-fuzz >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y afl++; } </dev/null
    else
        echo "setup: warning: afl-fuzz is missing and this is not root; the fuzz smoke runs will fail (apt-get install afl++)" >&2
    fi
fi
dotnet tool restore </dev/null
# --- libvirt (test prerequisite: GuestLibvirtTests start their own libvirtd when systemd is not PID 1) ---
if ! command -v libvirtd >/dev/null 2>&1 || ! command -v virsh >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients; } </dev/null
    else
        echo "setup: warning: libvirt is missing and this is not root; the libvirt tests will fail (apt-get install libvirt-daemon-system libvirt-clients)" >&2
    fi
fi
bash scripts/guest/prepare.sh </dev/null
# The service tests check the systemd unit with systemd-analyze and run it under systemd in a
# systemd-nspawn container (systemd need not be running here).
if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v systemd-nspawn >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd systemd-container; } </dev/null
    else
        echo "setup: warning: systemd-analyze or systemd-nspawn is missing and this is not root; the service tests will fail (apt-get install systemd systemd-container)" >&2
    fi
fi
echo "setup: done"
