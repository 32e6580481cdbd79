#!/usr/bin/env bash
# Fuzzes the sensor's packet decoder, capture reader and every protocol
# parser, and the batch payload decoder ingest runs on what sensors send,
# with libFuzzer (cargo fuzz), each for a bounded time, with a memory limit.
#
#   deploy/local/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Default: 30 s for each of the 4 targets: decode (link/IP/transport
# headers), capture (pcap/pcapng reader), protocols (every parser of the
# protocol registry, the first input byte picking which) and payload (batch
# payloads in every encoding; what decodes must re-encode to the same batch). cargo fuzz needs nightly
# compiler flags; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
# A crash or a leak/OOM stops the run with libFuzzer's report and the input
# saved under sensor/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../sensor"
secs=${1:-30}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(decode capture protocols payload)
fi
# Seed the capture target with the reference corpus.
seeds=fuzz/corpus/capture
mkdir -p "$seeds"
if [ -d ../../shared/pcaps ]; then
  find ../../shared/pcaps -name '*.pcap*' -size -64k -exec cp -n {} "$seeds/" \;
fi
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${secs}s"
  cargo fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=512 -max_len=65536 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==|ERROR|SUMMARY|Done)" || true
  if [ "${PIPESTATUS[0]}" != 0 ]; then
    echo "fuzz: $t failed; see sensor/fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzz: all ${#targets[@]} targets ran ${secs}s each without a crash"
