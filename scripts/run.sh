#!/usr/bin/env bash
# Builds the daemon (Release) and runs it in the foreground with the default configuration: a
# virtio-net device group, the owner on ./sockets/pf.sock and two VFs on ./sockets/vf1.sock and
# ./sockets/vf2.sock (relative to the current directory). Extra arguments go to vhost-virtio, e.g.
# `bash scripts/run.sh --vfs 4`, `bash scripts/run.sh keep -- serve` (restarted with its sessions
# kept if it dies, docs/restart.md) or `--help`.
# Stop it with Ctrl-C or SIGTERM; it removes its sockets and exits 0.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project="$repo/src/VhostUserVirtio.Daemon/VhostUserVirtio.Daemon.csproj"

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

# Build output goes to stderr so stdout stays the daemon's own (e.g. --print-capabilities JSON).
dotnet build "$project" -c Release --nologo -v quiet </dev/null >&2
# Ask MSBuild where the build put the executable rather than assuming the folder layout.
dll="$(dotnet msbuild "$project" -p:Configuration=Release -getProperty:TargetPath </dev/null)"
# exec: the daemon itself receives Ctrl-C/SIGTERM, and its exit code is this script's.
exec dotnet "$dll" "$@"
