#!/usr/bin/env bash
# Collector throughput on this machine: ingest acked flows/s into Kafka and
# sink rows/s into ClickHouse (release build, local stack). Arguments are
# passed to tidewatch-bench, e.g. --batches 400 --flows-per-batch 1000.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
deploy/local/stack.sh install
cargo build --release --workspace --bins --quiet
exec target/release/tidewatch-bench "$@"
