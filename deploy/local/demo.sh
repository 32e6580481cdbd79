#!/usr/bin/env bash
# tidewatch demo: installs what is missing, builds, starts ClickHouse and the
# broker, creates the schema and the fleet PKI, starts collector ingest and
# sink, replays two OT captures through two sensors with their own
# certificates, and prints the top-talkers and ot-writes queries from ClickHouse.
#
#   deploy/local/demo.sh           run the demo, then stop everything
#   deploy/local/demo.sh --keep    leave the stack, ingest and sink running
#
# State and logs: .stack/demo/ (removed at the start of each run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$(pwd)
KEEP=${1:-}
D="$ROOT/.stack/demo"
PCAPS="$ROOT/../shared/pcaps"
[ -d "$PCAPS" ] || { echo "demo: $PCAPS not found (the shared OT capture corpus)" >&2; exit 1; }

say() { printf '\n== %s\n' "$*"; }

say "installing what is missing and building"
deploy/local/stack.sh install
cargo build --workspace --bins --quiet
BIN="$ROOT/target/debug"

[ -d "$D" ] && deploy/local/stack.sh stop "$D/stack" 2>/dev/null || true
rm -rf "$D"; mkdir -p "$D"
PIDS=()
cleanup() {
  if [ "$KEEP" != "--keep" ]; then
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    deploy/local/stack.sh stop "$D/stack"
  fi
}
trap cleanup EXIT

say "starting ClickHouse and the Kafka-protocol broker"
deploy/local/stack.sh start "$D/stack"
set -a; . "$D/stack/stack.env"; set +a

say "creating the schema"
"$BIN/tidewatch-collector" migrate 2>/dev/null

say "fleet PKI: the CA, the server and ingest certificates, and each sensor enrolled"
P="$D/pki"
"$BIN/tidewatch-collector" pki --dir "$P" init-ca
"$BIN/tidewatch-collector" pki --dir "$P" issue-server --dns localhost --ip 127.0.0.1 >/dev/null
"$BIN/tidewatch-collector" pki --dir "$P" issue-ingest --name ingest-0 >/dev/null
for s in crane-07:port-of-hamburg bridge-01:mv-northern-star; do
  id=${s%%:*}; vessel=${s#*:}
  # On the sensor: its key is born there and never leaves it.
  "$BIN/tidewatch-sensor" enroll --key "$D/sensor-$id/key.pem" --csr "$D/sensor-$id/sensor.csr" >/dev/null
  # Ashore: the operator signs the request for the identity they choose.
  "$BIN/tidewatch-collector" pki --dir "$P" sign --csr "$D/sensor-$id/sensor.csr" --id "$id" \
    --vessel "$vessel" --out "$D/sensor-$id/cert.pem" >/dev/null
done
echo "enrolled sensors crane-07 (port-of-hamburg) and bridge-01 (mv-northern-star)"
"$BIN/tidewatch-collector" envelope-key --out-dir "$D/envelope" >/dev/null

say "starting the signer, collector ingest and sink (logs in $D)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
SIGNER_PORT=$(free_port)
"$BIN/tidewatch-collector" signer --dir "$P" --listen "127.0.0.1:$SIGNER_PORT" >"$D/signer.log" 2>&1 &
PIDS+=($!)
"$BIN/tidewatch-collector" ingest --listen "127.0.0.1:$PORT" --tls-cert "$P/server.pem" \
  --tls-key "$P/server-key.pem" --client-ca "$P/ca.pem" --crl "$P/crl.pem" \
  --envelope-signing-key "$D/envelope/envelope-signing-key.pem" \
  --signer "https://localhost:$SIGNER_PORT" --signer-ca "$P/ca.pem" \
  --signer-cert "$P/ingest/ingest-0.pem" --signer-key "$P/ingest/ingest-0-key.pem" >"$D/ingest.log" 2>&1 &
PIDS+=($!)
"$BIN/tidewatch-collector" sink --max-wait-ms 300 \
  --envelope-verify-key "$D/envelope/envelope-verify-key.pem" >"$D/sink.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 600); do grep -q "ingest listening" "$D/ingest.log" && break; sleep 0.1; done
grep -q "ingest listening" "$D/ingest.log" || { cat "$D/ingest.log"; exit 1; }

replay() { # id pcap...
  local id=$1; shift
  for f in "$@"; do
    "$BIN/tidewatch-sensor" run --pcap "$PCAPS/$f" --collector "https://127.0.0.1:$PORT" \
      --server-name localhost --ca "$P/ca.pem" --cert "$D/sensor-$id/cert.pem" --key "$D/sensor-$id/key.pem" \
      --state-dir "$D/sensor-$id" 2>>"$D/sensor-$id.log"
    echo "  $id uploaded $f"
  done
}
say "replaying captures through two sensors"
replay crane-07 modbus/modbus_example.pcap s7comm/s7comm_plus.pcap enip/enip_cip_example.pcap &
S1=$!
replay bridge-01 nmea0183/second.pcapng dnp3/dnp3_example.pcap bacnet/bacnet_example.pcap &
S2=$!
wait $S1; wait $S2
ACKED=$(grep -ho "flows_acked=[0-9]*" "$D"/sensor-*.log | cut -d= -f2 | awk "{s+=\$1} END {print s+0}")
echo "sensors: $ACKED flows acknowledged (in Kafka)"

say "waiting for the sink to store them in ClickHouse"
q() { curl -sf "$TIDEWATCH_CLICKHOUSE_URL" --data-binary "$1"; }
for _ in $(seq 1 600); do
  N=$(q "SELECT count() FROM tidewatch.flows" || echo 0)
  [ "$N" = "$ACKED" ] && break
  sleep 0.2
done
echo "ClickHouse: $N flows in tidewatch.flows (exactly-once view)"
[ "$N" = "$ACKED" ] || { echo "demo: ClickHouse has $N flows, sensors sent $ACKED" >&2; exit 1; }

say "top talkers per vessel (tidewatch-collector query top-talkers --since 2000-01-01 --limit 5)"
"$BIN/tidewatch-collector" query top-talkers --since 2000-01-01 --limit 5

say "OT write/control operations from hosts not known as engineering stations (query ot-writes)"
"$BIN/tidewatch-collector" query ot-writes --since 2000-01-01

if [ "$KEEP" = "--keep" ]; then
  say "left running: ClickHouse $TIDEWATCH_CLICKHOUSE_URL, Kafka $TIDEWATCH_KAFKA_BROKERS, ingest 127.0.0.1:$PORT"
  echo "stop with: kill ${PIDS[*]}; deploy/local/stack.sh stop $D/stack"
fi
