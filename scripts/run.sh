#!/usr/bin/env bash
# Runs the daemon in the foreground, building it (Release) first only when a source changed since
# the last build this script made: with no arguments it serves the default virtio-net device group,
# the owner (PF, with the admin queue) on ./sockets/pf.sock and two VFs on ./sockets/vf1.sock and
# ./sockets/vf2.sock, joined by the learning switch (relative to the current directory). Extra
# arguments go to vhost-virtio, e.g. `bash scripts/run.sh --vfs 4`, `bash scripts/run.sh keep -- serve`
# (restarted with its sessions kept if it dies, docs/restart.md) or `--help`.
# Stop it with Ctrl-C or SIGTERM; it removes its sockets and exits 0.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project="$repo/src/VhostUserVirtio.Daemon/VhostUserVirtio.Daemon.csproj"

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

# Ask MSBuild where the build puts the executable rather than assuming the folder layout.
dll="$(dotnet msbuild "$project" -p:Configuration=Release -getProperty:TargetPath </dev/null)"
# The stamp marks the last build made here. A no-change `dotnet build` still takes seconds (tens on
# a busy machine), while comparing times takes milliseconds: build only when the daemon is missing
# or a source, project or build setting is newer than the stamp.
stamp="$(dirname "$dll")/.run-sh-build"
changed=
if [ ! -f "$dll" ] || [ ! -f "$stamp" ]; then
    changed=yes
else
    changed="$(find "$repo/src" "$repo"/Directory.*.props \( -name bin -o -name obj \) -prune \
        -o -type f -newer "$stamp" -print -quit)"
fi
if [ -n "$changed" ]; then
    started="$(date +%s)"   # the stamp gets the time the build started: an edit made meanwhile counts next time
    # Build output goes to stderr so stdout stays the daemon's own (e.g. --print-capabilities JSON).
    dotnet build "$project" -c Release --nologo -v quiet </dev/null >&2
    touch -d "@$started" "$stamp"
fi
# exec: the daemon itself receives Ctrl-C/SIGTERM, and its exit code is this script's.
exec dotnet "$dll" "$@"
