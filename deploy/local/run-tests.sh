#!/usr/bin/env bash
# Runs every tidewatch test on this machine, installing what is missing first
# (ClickHouse server, the tansu broker, Python packages for interop/chDB).
# The end-to-end tests start their own ClickHouse and broker per test through
# deploy/local/stack.sh, on free 127.0.0.1 ports, and stop them afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

[ -d ../shared/pcaps ] || { echo "run-tests: ../shared/pcaps not found next to the checkout" >&2; exit 1; }
deploy/local/stack.sh install
cargo build --workspace --bins
cargo test --workspace -- "$@"
