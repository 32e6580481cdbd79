#!/usr/bin/env bash
# Runs every tidewatch test on this machine, installing what is missing first
# (ClickHouse server, the tansu broker, Python packages for interop/chDB).
# The end-to-end tests start their own ClickHouse and broker per test through
# deploy/local/stack.sh, on free 127.0.0.1 ports, and stop them afterwards.
# Extra arguments go to the test binaries (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

[ -d ../shared/pcaps ] || { echo "run-tests: ../shared/pcaps not found next to the checkout" >&2; exit 1; }
deploy/local/stack.sh install
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets --no-fail-fast -- "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "tidewatch: $passed passed, $failed failed"
exit "$status"
