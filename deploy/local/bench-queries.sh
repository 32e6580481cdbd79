#!/usr/bin/env bash
# Time of each query of the analysts' pack over a synthetic fleet of about
# 10 M flows loaded through the real pipeline (release build, local stack).
# Arguments are passed on, e.g. --vessels 20 --days 14 --scale 7 --runs 3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
deploy/local/stack.sh install
cargo build --release --workspace --bins --quiet
exec target/release/tidewatch-bench-queries "$@"
