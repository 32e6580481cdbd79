#!/usr/bin/env bash
# Alarm latency and detector throughput on this machine (release build,
# local stack): a flow's last packet at a live sensor to its alert at a
# real rsyslog, with the sensor's default flush interval and with 1 s; and
# the detector's flows/s on one core. Needs root (live capture on lo, port
# 502). Arguments go to tidewatch-bench-alerts, e.g. --writes 30 --scale 20.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
deploy/local/stack.sh install
cargo build --release --workspace --bins --quiet
exec target/release/tidewatch-bench-alerts "$@"
