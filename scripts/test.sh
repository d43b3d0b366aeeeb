#!/usr/bin/env bash
# Builds (Release) and runs every test and the fuzz smoke runs, then prints one final line "N passed, M failed" with the
# totals of all TRX result files. Exits non-zero if a test failed, if none ran, or if the build
# or the test run failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

# What the tests need beyond the daemon's own (QEMU, DPDK, AFL++, the guest image): scripts/setup.sh
# alone installs only what running the daemon needs.
if ! bash scripts/setup.sh --tests </dev/null; then
    echo "test: error: bash scripts/setup.sh --tests failed" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

results=artifacts/test-results
rm -rf "$results"   # only this run's files count
mkdir -p "$results"

# --disable-build-servers: no compiler/MSBuild server outlives the run holding the output pipe (CI).
dotnet test VhostUserVirtio.sln -c Release --disable-build-servers \
    --logger trx --results-directory "$results" </dev/null
status=$?

passed=0
failed=0
while IFS= read -r -d '' trx; do
    counters="$(grep -o '<Counters [^>]*' "$trx" | head -n 1)"
    # The leading space keeps passed= from matching passedButRunAborted=.
    p="$(grep -o ' passed="[0-9]*"' <<<"$counters" | grep -o '[0-9]\+' || true)"
    f="$(grep -o ' failed="[0-9]*"' <<<"$counters" | grep -o '[0-9]\+' || true)"
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
done < <(find "$results" -name '*.trx' -print0)

# Fuzz smoke (docs/fuzzing.md): each target a few seconds under AFL++; each run counts as one test.
while IFS= read -r line; do
    echo "$line"
    case "$line" in
        "fuzz "*": ok"*) passed=$((passed + 1)) ;;
        "fuzz "*) failed=$((failed + 1)) ;;
    esac
done < <(FUZZ_WORK=artifacts/fuzz-smoke bash scripts/fuzz.sh all "${FUZZ_SMOKE_SECONDS:-10}" </dev/null)

echo "$passed passed, $failed failed"
if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ] || [ $((passed + failed)) -eq 0 ]; then
    exit 1
fi
