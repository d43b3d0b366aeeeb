#!/usr/bin/env bash
# Installs vhost-virtio as a service: a self-contained ReadyToRun build (no .NET runtime needed on
# the machine that runs it) in PREFIX/lib/vhost-virtio/ with PREFIX/bin/vhost-virtio linking to it,
# the vhost-user back-end descriptor PREFIX/share/qemu/vhost-user/50-vhost-virtio.json (QEMU's
# docs/interop/vhost-user.rst, "Backend program conventions") and, unless --no-systemd, the unit
# vhost-virtio.service (docs/service.md). Building needs the .NET 10 SDK and, the first time, NuGet
# for the runtime pack and crossgen2. Enables and starts nothing: it prints how.
#
#   bash scripts/install.sh [--prefix DIR] [--destdir DIR] [--no-systemd] [--unit-dir DIR] [--rid RID]
#
#   --prefix DIR    where it runs from (default /usr/local); the paths in the unit and descriptor
#   --destdir DIR   a staging root that everything is written under (as make's DESTDIR; also $DESTDIR)
#   --no-systemd    no unit file
#   --unit-dir DIR  where the unit goes (default PREFIX/lib/systemd/system, which systemd reads for
#                   the prefixes /usr and /usr/local; for others, `systemctl link` the file)
#   --rid RID       .NET runtime identifier to build for (default: this machine's, linux-x64 or linux-arm64)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project="$repo/src/VhostUserVirtio.Daemon/VhostUserVirtio.Daemon.csproj"

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

fail() { echo "install: error: $*" >&2; exit 1; }
usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

prefix=/usr/local
destdir="${DESTDIR:-}"
systemd=yes
unit_dir=
case "$(uname -m)" in
    x86_64) host_rid=linux-x64 ;;
    aarch64) host_rid=linux-arm64 ;;
    *) host_rid= ;;
esac
rid="$host_rid"
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || fail "--prefix needs a directory"; prefix="$2"; shift 2 ;;
        --prefix=*) prefix="${1#*=}"; shift ;;
        --destdir) [ $# -ge 2 ] || fail "--destdir needs a directory"; destdir="$2"; shift 2 ;;
        --destdir=*) destdir="${1#*=}"; shift ;;
        --unit-dir) [ $# -ge 2 ] || fail "--unit-dir needs a directory"; unit_dir="$2"; shift 2 ;;
        --unit-dir=*) unit_dir="${1#*=}"; shift ;;
        --rid) [ $# -ge 2 ] || fail "--rid needs a runtime identifier"; rid="$2"; shift 2 ;;
        --rid=*) rid="${1#*=}"; shift ;;
        --no-systemd) systemd=no; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install: error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$rid" ] || fail "no .NET runtime identifier for $(uname -m); give one with --rid"
# The prefix is written into the unit and the JSON descriptor as is: keep it to characters that need
# no quoting in either (systemd gives % and $ meanings, JSON " and \).
[[ "$prefix" == /* && "$prefix" =~ ^[A-Za-z0-9/._+-]+$ ]] \
    || fail "--prefix must be an absolute path of letters, digits and / . _ + - (got '$prefix')"
prefix="${prefix%/}"; prefix="${prefix:-/}"
unit_dir="${unit_dir:-$prefix/lib/systemd/system}"
[[ "$unit_dir" == /* ]] || fail "--unit-dir must be an absolute path (got '$unit_dir')"
if [ -n "$destdir" ]; then
    mkdir -p "$destdir"
    destdir="$(cd "$destdir" && pwd)"
fi

command -v dotnet >/dev/null 2>&1 || fail "'dotnet' is not on PATH: building needs the .NET 10 SDK (https://dot.net)"
dotnet --list-sdks | grep -q '^10\.' || fail "no .NET 10 SDK found ('dotnet --list-sdks')"

# A build of its own (bin/obj under artifacts/install) so publishing never touches the development
# build that scripts/run.sh and the tests use. --disable-build-servers: no MSBuild node outlives this.
artifacts="$repo/artifacts/install"
published="$artifacts/published-$rid"
# One publish at a time in this tree (two would build into the same obj folders).
mkdir -p "$artifacts"
exec 9>"$artifacts/.lock"
flock 9
rm -rf "$published"
echo "install: publishing a self-contained ReadyToRun build for $rid (the first time takes minutes)"
# SatelliteResourceLanguages=en: no translated command-line messages (a dozen folders nobody reads).
if ! dotnet publish "$project" -c Release -r "$rid" --self-contained -p:PublishReadyToRun=true -p:SatelliteResourceLanguages=en \
        --artifacts-path "$artifacts" -o "$published" --nologo --disable-build-servers -v quiet </dev/null >&2; then
    fail "publishing failed (above). A self-contained build needs the packages Microsoft.NETCore.App.Runtime.$rid and Microsoft.NETCore.App.Crossgen2.$host_rid from NuGet, downloaded once into the NuGet cache: check the network or the NuGet sources"
fi
[ -x "$published/vhost-virtio" ] || fail "the publish output has no vhost-virtio executable ($published)"

root="$destdir$prefix"
lib="$root/lib/vhost-virtio"
bindir="$prefix/bin"
mkdir -p "$root/lib" "$root/bin" "$root/share/qemu/vhost-user"
# Replace the old build whole, by renames: a running service keeps the files it has open, and no
# mix of old and new files is ever in place.
rm -rf "$lib.new" "$lib.old"
cp -a "$published" "$lib.new"
[ ! -e "$lib" ] || mv "$lib" "$lib.old"
mv "$lib.new" "$lib"
rm -rf "$lib.old"
# A relative link, right under --destdir too; the executable finds its files through the link.
ln -sfn ../lib/vhost-virtio/vhost-virtio "$root/bin/vhost-virtio"

descriptor="$root/share/qemu/vhost-user/50-vhost-virtio.json"
sed "s|@BINDIR@|$bindir|g" "$repo/scripts/service/50-vhost-virtio.json.in" >"$descriptor"
chmod 0644 "$descriptor"
echo "install: $lib/ and $root/bin/vhost-virtio"
echo "install: $descriptor"
# vhost-user.json's search list is /usr/share/qemu/vhost-user (XDG_DATA_DIRS), /etc/qemu/vhost-user
# and the user's XDG_CONFIG_HOME; libvirt reads the first two only, not /usr/local/share.
if [ "$prefix" != /usr ]; then
    echo "install: management software that reads only /usr/share and /etc finds the descriptor after:"
    echo "         mkdir -p /etc/qemu/vhost-user && ln -s $prefix/share/qemu/vhost-user/50-vhost-virtio.json /etc/qemu/vhost-user/"
fi

unit=
if [ "$systemd" = yes ]; then
    mkdir -p "$destdir$unit_dir"
    unit="$destdir$unit_dir/vhost-virtio.service"
    sed "s|@BINDIR@|$bindir|g" "$repo/scripts/service/vhost-virtio.service.in" >"$unit"
    chmod 0644 "$unit"
    echo "install: $unit"
fi

# The installed program answers as the spec asks (skipped for another architecture's build).
if [ "$rid" = "$host_rid" ]; then
    "$root/bin/vhost-virtio" --print-capabilities </dev/null >/dev/null \
        || fail "the installed $root/bin/vhost-virtio does not run (--print-capabilities failed)"
fi

if [ -n "$unit" ] && [ -z "$destdir" ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        case "$unit_dir" in
            /usr/lib/systemd/system|/usr/local/lib/systemd/system|/etc/systemd/system|/lib/systemd/system)
                echo "install: start it with: systemctl enable --now vhost-virtio" ;;
            *)  echo "install: systemd does not read $unit_dir; link the unit first: systemctl link $unit" ;;
        esac
    else
        echo "install: systemd is not running here; the unit is in place for when it is"
    fi
fi
echo "install: done (docs/service.md: options, QEMU and libvirt, readiness, restarts)"
