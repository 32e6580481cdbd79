#!/usr/bin/env bash
# Ingest with many concurrent sensor streams on this machine: resident memory
# with every stream open, acked flows/s and peak memory while they all upload
# (release build, local stack). Arguments are passed to
# tidewatch-bench-streams, e.g. --streams 10000 --certs 200.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
deploy/local/stack.sh install
cargo build --release --workspace --bins --quiet
exec target/release/tidewatch-bench-streams "$@"
