#!/usr/bin/env bash
# Managed devices through the transport queue: what an idle one costs in resident memory, and how
# long DEV_CREATE and DEV_DESTROY take as the owner driver sees them.
#   scripts/bench-vdev.sh [count] [rounds]     # default 1000 devices, 3 rounds; CSV on stdout
# Then BenchmarkDotNet's create+destroy benchmark (ManagedDeviceBenchmark); its results go to
# BenchmarkDotNet.Artifacts/. Targets: under 1 ms per create, under 64 KiB per idle device.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project="$root/tests/VhostUserVirtio.Benchmarks/VhostUserVirtio.Benchmarks.csproj"
dotnet build "$project" -c Release --nologo -v quiet
cd "$root"
count="${1:-1000}" rounds="${2:-3}"
echo "== idle managed devices: memory and latency ($count devices, $rounds fresh processes)" >&2
for ((r = 1; r <= rounds; r++)); do
    header=()
    [[ $r -eq 1 ]] && header=(--header)
    dotnet run --project "$project" -c Release --no-build -- vdev-footprint "$count" "${header[@]}"
done
echo "== BenchmarkDotNet: DEV_CREATE + DEV_DESTROY" >&2
dotnet run --project "$project" -c Release --no-build -- --filter '*ManagedDeviceBenchmark*' --artifacts "$root/BenchmarkDotNet.Artifacts"
