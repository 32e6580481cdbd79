#!/usr/bin/env bash
# Regenerates the example E26 report in docs/examples/ from the synthetic
# fleet (starts its own local stack, stops it after): HTML, JSON and a PNG
# of the first screen. Needs the stack's packages (stack.sh install).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --workspace --bins --quiet
exec target/debug/tidewatch-example-report "$@"
