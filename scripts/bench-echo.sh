#!/usr/bin/env bash
# Builds the benchmarks in Release and runs them with BenchmarkDotNet.
#   scripts/bench-echo.sh                          # everything (--filter '*')
#   scripts/bench-echo.sh --filter '*SplitQueue*'  # any BenchmarkDotNet arguments pass through
# Results (markdown, csv, html, logs) go to BenchmarkDotNet.Artifacts/ at the repository root
# (git-ignored) unless --artifacts DIR is given.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project="$root/tests/VhostUserVirtio.Benchmarks/VhostUserVirtio.Benchmarks.csproj"

args=("$@")
# With no filter BenchmarkSwitcher asks interactively; default to running everything.
if [[ ${#args[@]} -eq 0 ]]; then
    args=(--filter '*')
fi
artifacts="$root/BenchmarkDotNet.Artifacts"
for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ "${args[$i]}" == "--artifacts" && $((i + 1)) -lt ${#args[@]} ]]; then
        artifacts="${args[$((i + 1))]}"
    fi
done
if [[ " ${args[*]} " != *" --artifacts "* ]]; then
    args+=(--artifacts "$artifacts")
fi

dotnet build "$project" -c Release --nologo -v quiet
# Run from the root so relative paths in the arguments mean what the caller expects.
cd "$root"
dotnet run --project "$project" -c Release --no-build -- "${args[@]}"

echo
echo "Benchmark results written to: $artifacts/results"
