#!/usr/bin/env bash
# Runs every tidewatch test on this machine, installing what is missing first
# (ClickHouse server, the tansu broker, Python packages for interop/chDB).
# The end-to-end tests start their own ClickHouse and broker per test through
# deploy/local/stack.sh, on free 127.0.0.1 ports, and stop them afterwards.
# Extra arguments go to the test binaries (e.g. a test name filter).
#
# The run fails when a test fails, when a filter matches no test, and, with
# no filter, when fewer tests ran than the suite holds (`cargo test -- --list`):
# a test binary that stops early or is left out cannot pass unnoticed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

[ -d ../shared/pcaps ] || { echo "run-tests: ../shared/pcaps not found next to the checkout" >&2; exit 1; }
deploy/local/stack.sh install
cargo build --workspace --bins
log=$(mktemp)
list=$(mktemp)
trap 'rm -f "$log" "$list"' EXIT
status=0
cargo test --workspace --all-targets --no-fail-fast -- "$@" 2>&1 | tee "$log" || status=$?
sum() { grep -Eo "^test result: .* ([0-9]+) $1" "$log" | grep -Eo "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
passed=$(sum passed)
failed=$(sum failed)
ignored=$(sum ignored)
ran=$((passed + failed + ignored))
echo
if [ "$#" -gt 0 ]; then
  if [ "$ran" -eq 0 ]; then
    echo "run-tests: no test matches the filter: $*" >&2
    status=1
  fi
else
  cargo test --workspace --all-targets -q -- --list >"$list" 2>/dev/null
  held=$(grep -c ': test$' "$list" || true)
  if [ "$ran" -lt "$held" ]; then
    echo "run-tests: only $ran of the suite's $held tests ran" >&2
    [ "$status" -ne 0 ] || status=1
  fi
fi
echo "tidewatch: $passed passed, $failed failed"
exit "$status"
