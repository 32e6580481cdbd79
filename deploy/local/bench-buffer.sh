#!/usr/bin/env bash
# The sensor's disk buffer on this machine (release build): append and drain
# throughput of a 1 GiB backlog and the RSS while draining it. Arguments are
# passed on, e.g. --mib 256 or --dir /var/tmp/tw-bench.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --release -p tidewatch-tests --bin tidewatch-bench-buffer --quiet
exec target/release/tidewatch-bench-buffer "$@"
