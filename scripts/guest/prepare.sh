#!/usr/bin/env bash
# Prepares everything a test needs to boot a small Linux guest under QEMU (TCG, no KVM):
#   - installs qemu-system-x86, qemu-utils and busybox-static when missing (Debian 12, as root);
#   - downloads the Debian cloud kernel package matching linux-image-cloud-amd64 (without
#     installing it) and unpacks vmlinuz and the virtio modules into .cache/guest/;
#   - builds .cache/guest/initramfs.cpio.gz: static busybox, the modules and an /init that loads
#     them, prints GUEST-BOOTED, runs /test.sh if present, prints "GUEST-TEST-EXIT <status>" and
#     powers off. Tests append a second cpio archive holding /test.sh (the kernel unpacks
#     concatenated archives).
#   - builds .cache/guest/tools.cpio.gz, a second archive with iperf3 and the shared libraries it
#     loads (from the host's Debian package, found with ldd), which tests that measure TCP append.
#     It has a stamp of its own, so the base initramfs is not rebuilt for it.
# Safe to run again: work whose result is cached (same kernel, busybox and init) is skipped.
# The last lines are "GUEST-KERNEL=<path>", "GUEST-INITRAMFS=<path>" and "GUEST-TOOLS=<path>".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="$root/.cache/guest"
log() { echo "guest-prepare: $*"; }

# Load order matters: busybox insmod does not resolve dependencies.
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net virtio_blk)

# Lock::Timeout: wait for another apt/dpkg run (other sessions, unattended upgrades) instead of failing.
apt_updated=0
apt_update_once() {
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq -o DPkg::Lock::Timeout=600
        apt_updated=1
    fi
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# 1. Host packages.
missing=()
# iproute2: the handover test joins two daemons through a bridge in a network namespace of its own.
# iperf3: copied into the tools archive for the guests' TCP tests and benchmarks.
for p in qemu-system-x86 qemu-utils busybox-static iproute2 iperf3; do
    installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "guest-prepare: error: missing packages (${missing[*]}); run this as root" >&2
        exit 1
    fi
    apt_update_once
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null
else
    log "qemu-system-x86, qemu-utils, busybox-static, iproute2 and iperf3 already installed"
fi
log "$(qemu-system-x86_64 --version | head -n 1)"

# 2. Kernel: the ABI name the cloud metapackage currently depends on, e.g. 6.1.0-56-cloud-amd64.
resolve_kernel() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-cloud-amd64\)\(-unsigned\)\?$/\1/p' | head -n 1
}
kver="$(resolve_kernel || true)"
if [[ -z "$kver" ]]; then
    if [[ -f "$cache/kernel.version" && -f "$cache/vmlinuz" ]] && [[ ${#missing[@]} -eq 0 ]] &&
        ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
        # No package lists (e.g. offline after a cleanup): keep what is cached rather than fail.
        kver="$(cat "$cache/kernel.version")"
        log "package lists unavailable; using cached kernel $kver"
    else
        apt_update_once
        kver="$(resolve_kernel)"
    fi
fi
[[ -n "$kver" ]] || { echo "guest-prepare: error: cannot resolve linux-image-cloud-amd64's kernel" >&2; exit 1; }

mkdir -p "$cache"
# One preparation at a time per cache (setup and a test run, or parallel test processes).
exec 9>"$cache/.lock"
flock 9
if [[ -f "$cache/kernel.version" && "$(cat "$cache/kernel.version")" == "$kver" && -f "$cache/vmlinuz" ]]; then
    log "kernel $kver already cached"
else
    log "kernel $kver: downloading"
    rm -rf "$cache/kernel" "$cache/download" "$cache/vmlinuz" "$cache/modules" "$cache/kernel.version"
    mkdir -p "$cache/download" "$cache/kernel"
    # The unsigned package has the same files without the Secure Boot signature; take either.
    pkg=""
    for candidate in "linux-image-$kver-unsigned" "linux-image-$kver"; do
        if apt-cache show "$candidate" >/dev/null 2>&1; then pkg="$candidate"; break; fi
    done
    [[ -n "$pkg" ]] || { echo "guest-prepare: error: no package for kernel $kver" >&2; exit 1; }
    # _apt cannot write into root's folders; download as root without the sandbox user. Stale
    # package lists name a file the mirror no longer has: refresh them once and retry.
    download() { (cd "$cache/download" && apt-get download -qq -o APT::Sandbox::User=root "$pkg"); }
    if ! download; then
        apt_update_once
        download
    fi
    dpkg -x "$cache"/download/*.deb "$cache/kernel"
    cp "$cache/kernel/boot/vmlinuz-$kver" "$cache/vmlinuz"
    mkdir -p "$cache/modules"
    moddir="$cache/kernel/lib/modules/$kver"
    for m in "${modules[@]}"; do
        f="$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n 1)"
        if [[ -z "$f" ]]; then
            if grep -q "/$m.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
                log "module $m is built in"
                continue
            fi
            echo "guest-prepare: error: module $m not found in $pkg" >&2
            exit 1
        fi
        # busybox insmod loads plain .ko files only.
        case "$f" in
            *.xz) xz -dc "$f" >"$cache/modules/$m.ko" ;;
            *.zst) zstd -qdc "$f" >"$cache/modules/$m.ko" ;;
            *.gz) gzip -dc "$f" >"$cache/modules/$m.ko" ;;
            *) cp "$f" "$cache/modules/$m.ko" ;;
        esac
    done
    # Only vmlinuz and the modules are needed; drop the rest (about 100 MB unpacked).
    rm -rf "$cache/kernel" "$cache/download"
    echo "$kver" >"$cache/kernel.version"
    log "kernel $kver cached ($(du -sh "$cache/vmlinuz" | cut -f1) vmlinuz)"
fi

# 3. Base initramfs.
busybox=/bin/busybox
init_script='#!/bin/sh
# Generated by scripts/guest/prepare.sh.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /tmp /run /var/run
for m in $(cat /etc/modules.order); do
    [ -f /lib/modules/$m.ko ] || continue
    insmod /lib/modules/$m.ko || echo "GUEST-INSMOD-FAILED $m"
done
ip link set lo up
echo "GUEST-BOOTED uptime=$(cut -d" " -f1 /proc/uptime)"
if [ -f /test.sh ]; then
    sh /test.sh
    status=$?
    echo "GUEST-TEST-EXIT $status"
else
    echo "GUEST-TEST-EXIT none"
fi
poweroff -f
'
stamp="kernel=$kver busybox=$(dpkg-query -W -f='${Version}' busybox-static) modules=${modules[*]} init=$(printf '%s' "$init_script" | md5sum | cut -d' ' -f1)"
if [[ -f "$cache/initramfs.stamp" && "$(cat "$cache/initramfs.stamp")" == "$stamp" && -f "$cache/initramfs.cpio.gz" ]]; then
    log "initramfs already built"
else
    log "building initramfs"
    staging="$(mktemp -d "$cache/initramfs.XXXXXX")"
    trap 'rm -rf "$staging"' EXIT
    mkdir -p "$staging"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,etc,tmp,run,lib/modules}
    cp "$busybox" "$staging/bin/busybox"
    # One symlink per applet, at the path busybox itself reports (bin/sh, sbin/ip, ...).
    "$busybox" --list-full | while read -r applet; do
        [[ -e "$staging/$applet" ]] || ln -s /bin/busybox "$staging/$applet"
    done
    cp "$cache"/modules/*.ko "$staging/lib/modules/" 2>/dev/null || true
    printf '%s\n' "${modules[@]}" >"$staging/etc/modules.order"
    printf '%s' "$init_script" >"$staging/init"
    chmod 755 "$staging/init"
    # The kernel opens /dev/console before running /init; devtmpfs is not mounted yet then.
    if [[ $(id -u) -eq 0 ]]; then mknod -m 600 "$staging/dev/console" c 5 1; fi
    (cd "$staging" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort |
        "$busybox" cpio -o -H newc 2>/dev/null | gzip -6 >"$cache/initramfs.cpio.gz.tmp")
    mv "$cache/initramfs.cpio.gz.tmp" "$cache/initramfs.cpio.gz"
    echo "$stamp" >"$cache/initramfs.stamp"
    log "initramfs built ($(du -sh "$cache/initramfs.cpio.gz" | cut -f1))"
fi

# 4. Tools archive: iperf3 with the libraries ldd says it loads, at the same paths as on the host.
tools_stamp="iperf3=$(dpkg-query -W -f='${Version}' iperf3) libc=$(dpkg-query -W -f='${Version}' libc6)"
if [[ -f "$cache/tools.stamp" && "$(cat "$cache/tools.stamp")" == "$tools_stamp" && -f "$cache/tools.cpio.gz" ]]; then
    log "tools archive already built"
else
    log "building tools archive (iperf3)"
    tools="$(mktemp -d "$cache/tools.XXXXXX")"
    trap 'rm -rf "$tools" "${staging:-}"' EXIT
    mkdir -p "$tools/usr/bin"
    cp /usr/bin/iperf3 "$tools/usr/bin/iperf3"
    ldd /usr/bin/iperf3 | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$tools$(dirname "$lib")"
        cp -L "$lib" "$tools$lib"
    done
    (cd "$tools" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort |
        "$busybox" cpio -o -H newc 2>/dev/null | gzip -6 >"$cache/tools.cpio.gz.tmp")
    mv "$cache/tools.cpio.gz.tmp" "$cache/tools.cpio.gz"
    echo "$tools_stamp" >"$cache/tools.stamp"
    rm -rf "$tools"
    log "tools archive built ($(du -sh "$cache/tools.cpio.gz" | cut -f1))"
fi

echo "GUEST-KERNEL=$cache/vmlinuz"
echo "GUEST-INITRAMFS=$cache/initramfs.cpio.gz"
echo "GUEST-TOOLS=$cache/tools.cpio.gz"
