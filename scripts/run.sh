#!/usr/bin/env bash
# Builds the daemon (Release) and runs it in the foreground with the default configuration: two
# echo devices listening on ./sockets/echo0.sock and ./sockets/echo1.sock (relative to the current
# directory). Extra arguments go to vhost-virtio, e.g. `bash scripts/run.sh --devices 4` or `--help`.
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
