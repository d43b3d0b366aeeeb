#!/usr/bin/env bash
# Tries the installed service under a real systemd, on a machine where systemd is not PID 1 (a
# container, CI): boots this machine's own /usr in a throwaway systemd-nspawn container, installs
# vhost-virtio there with scripts/install.sh, and inside it starts the unit (plain `serve`), stops
# it, starts it again under the session keeper (`keep -- serve --vfs 3`), SIGKILLs the daemon and
# stops the unit. It prints `systemctl status` at each step and then the unit's journal. Needs root
# and a merged-/usr Debian (12 and later); installs systemd-container when nspawn is missing.
# Leaves nothing behind.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

fail() { echo "try-under-systemd: error: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (systemd-nspawn)"
[ -L /bin ] && [ -L /lib ] || fail "needs a merged /usr (/bin and /lib links into /usr)"
if ! command -v systemd-nspawn >/dev/null 2>&1; then
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd-container; } </dev/null
fi

root="$(mktemp -d /tmp/vhost-virtio-systemd.XXXXXX)"
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"   # it is the container's /: the service's own user must be able to enter it
# The container's root: this machine's /usr (bound read-only at boot), a copy of /etc, empty rest.
mkdir -p "$root"/{usr,var,tmp,root,home,run,proc,sys,dev,opt}
cp -a /etc "$root/etc"
for d in bin sbin lib lib64; do [ -L "/$d" ] && ln -s "$(readlink "/$d")" "$root/$d"; done
rm -f "$root/etc/os-release" "$root/etc/machine-id"
cp /usr/lib/os-release "$root/etc/os-release"   # nspawn checks for it before /usr is bound
echo vhost-virtio-try >"$root/etc/hostname"

bash "$repo/scripts/install.sh" --destdir "$root" --prefix /opt/vhost-virtio --unit-dir /etc/systemd/system

# What runs inside once booted; its output lands in $root/root/report.txt.
cat >"$root/etc/systemd/system/vhost-virtio-try.service" <<'EOF'
[Unit]
Description=try vhost-virtio.service
[Service]
Type=oneshot
StandardOutput=file:/root/report.txt
StandardError=inherit
ExecStart=/bin/sh -c '\
  echo "== at boot"; systemctl status --no-pager -l vhost-virtio; journalctl -b -u vhost-virtio --no-pager | head -50; \
  echo "== systemctl start vhost-virtio (serve)"; systemctl start vhost-virtio; echo "start: exit $?"; \
  systemctl status --no-pager -l vhost-virtio; ls -l /run/vhost-virtio; \
  systemctl stop vhost-virtio; echo "stop: exit $?"; \
  printf "VHOST_VIRTIO_COMMAND=keep -- serve\\nVHOST_VIRTIO_OPTIONS=--vfs 3\\n" >/etc/default/vhost-virtio; \
  echo "== systemctl start vhost-virtio (keep -- serve --vfs 3)"; systemctl start vhost-virtio; echo "start: exit $?"; \
  keeper=$(systemctl show -p MainPID --value vhost-virtio); daemon=$(pgrep -P "$keeper" | head -n 1); \
  echo "== SIGKILL to the daemon (pid $daemon) under the keeper (pid $keeper)"; kill -KILL "$daemon"; sleep 5; \
  systemctl status --no-pager -l vhost-virtio; \
  systemctl stop vhost-virtio; echo "stop: exit $?"; systemctl show -p Result -p ExecMainStatus vhost-virtio; \
  echo "== journalctl -u vhost-virtio"; journalctl -u vhost-virtio --no-pager; \
  echo "== systemd-analyze security vhost-virtio"; systemd-analyze security --no-pager vhost-virtio | tail -n 1; \
  systemctl poweroff --force'
EOF

# --register=no --keep-unit: no systemd (nor D-Bus) outside to register with or to make a scope.
# --private-network: nothing started inside listens on this machine's network. systemd.unit= boots
# into the check alone, not into the services this machine's /etc enables.
echo "try-under-systemd: booting the container (boot log in $root/boot.log while it runs)"
if ! timeout 300 systemd-nspawn --quiet --register=no --keep-unit --private-network -D "$root" --bind-ro=/usr \
        --boot systemd.unit=vhost-virtio-try.service >"$root/boot.log" 2>&1; then
    # nspawn's last word ("Attempted to remove disk file system…" at its cleanup) can set a failing status.
    [ -s "$root/root/report.txt" ] || { cat "$root/boot.log" >&2; fail "the container did not run the checks"; }
fi
[ -s "$root/root/report.txt" ] || { cat "$root/boot.log" >&2; fail "the container wrote no report"; }
cat "$root/root/report.txt"
