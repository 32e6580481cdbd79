#!/usr/bin/env python3
"""Checks tidewatch's modern-ClickHouse schema and queries on chDB (an
in-process modern ClickHouse engine from PyPI), since only the old 18.16
server can run here.

  check_modern.py SCHEMA.sql TOP_TALKERS.sql MAX_DAYS_PER_INSERT

SCHEMA.sql is `tidewatch-collector migrate --print --server-version 26.9`,
TOP_TALKERS.sql is `tidewatch-collector query top-talkers --print-sql ...`,
MAX_DAYS_PER_INSERT the sink's cut of its inserts by day.
Prints a JSON report; exits 1 if any check fails.
"""
import json
import sys

from chdb import session


def statements(text):
    body = "\n".join(l for l in text.splitlines() if not l.strip().startswith("--"))
    return [s.strip() for s in body.split(";\n") if s.strip().rstrip(";").strip()]


def main():
    schema, query = open(sys.argv[1]).read(), open(sys.argv[2]).read()
    s = session.Session()
    version = s.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')
    for st in statements(schema):
        s.query(st.rstrip(";"))

    def one(sql):
        return s.query(sql, "TabSeparated").bytes().decode().strip()

    checks = {}
    checks["sensor_id_lowcardinality"] = one(
        "SELECT type FROM system.columns WHERE database='tidewatch' AND table='flows_raw' AND name='sensor_id'"
    ) == "LowCardinality(String)"
    checks["ipv6_column"] = one(
        "SELECT type FROM system.columns WHERE database='tidewatch' AND table='flows_raw' AND name='client_ip6'"
    ) == "IPv6"
    checks["codec"] = "Delta" in one(
        "SELECT compression_codec FROM system.columns WHERE database='tidewatch' AND table='flows_raw' AND name='first_seen_us'"
    )
    # Retention: every table the README says is kept for a time has a TTL.
    for t in ("flows_raw", "traffic_hourly_raw", "dest_hourly_raw", "assets_raw", "sensor_status_raw"):
        checks[f"ttl_{t}"] = "TTL" in one(f"SELECT engine_full FROM system.tables WHERE database='tidewatch' AND name='{t}'")

    cols = ("sensor_id, vessel, batch_seq, record_idx, received_at, first_seen_us, last_seen_us, client_ip, server_ip, "
            "client_port, server_port, ip_protocol, transport, app_protocol, vlan, c2s_packets, c2s_bytes, "
            "c2s_payload_bytes, c2s_tcp_flags, s2c_packets, s2c_bytes, s2c_payload_bytes, s2c_tcp_flags, end_reason, "
            "op_codes, op_names, op_classes, op_counts, op_errors, indicators")
    now_us = int(one("SELECT toUnixTimestamp(now())")) * 1_000_000

    def row(seq, idx, client, nbytes):
        return (f"('s1', 'mv-chdb', {seq}, {idx}, now(), {now_us - 60_000_000}, {now_us - 30_000_000}, '{client}', "
                f"'10.0.0.1', 40000, 502, 6, 'tcp', 'modbus', 0, 4, {nbytes}, 10, 27, 3, 100, 5, 27, 'tcp_close', "
                f"[3], ['read_holding_registers'], ['read'], [2], [0], [])")

    # The same batch stored twice (resend / sink restart), plus another flow.
    s.query(f"INSERT INTO tidewatch.flows_raw ({cols}) VALUES {row(1, 0, '10.0.0.9', 500)}")
    s.query(f"INSERT INTO tidewatch.flows_raw ({cols}) VALUES {row(1, 0, '10.0.0.9', 500)}")
    s.query(f"INSERT INTO tidewatch.flows_raw ({cols}) VALUES {row(2, 0, '10.0.0.8', 900)}")
    checks["raw_has_duplicate"] = one("SELECT count() FROM tidewatch.flows_raw") == "3"
    checks["view_counts_once"] = one("SELECT count() FROM tidewatch.flows") == "2"
    checks["ipv6_materialized"] = one(
        "SELECT toString(client_ip6) FROM tidewatch.flows_raw WHERE batch_seq = 2") == "::ffff:10.0.0.8"
    # ... and it takes effect: a row past its table's retention goes at the
    # next merge, a recent one stays (the schema was rendered with the
    # default retention: 90 days of flows, 400 of the rest).
    day = 86_400 * 1_000_000
    old, new = now_us - 500 * day, now_us - day
    expiry = {
        "assets_raw": (
            "sensor_id, vessel, batch_seq, record_idx, received_at, mac, ips, vendor, first_seen_us, last_seen_us, protocols, roles",
            lambda seq, t: f"('s9', 'mv-ttl', {seq}, 0, now(), 'aa', ['10.0.0.1'], '', {t}, {t}, [], [])",
        ),
        "sensor_status_raw": (
            "sensor_id, vessel, batch_seq, record_idx, received_at, observed_us",
            lambda seq, t: f"('s9', 'mv-ttl', {seq}, 0, now(), {t})",
        ),
    }
    rollup = (
        "vessel, sensor_id, batch_seq, hour, server_ip, flows",
        lambda seq, t: f"('mv-ttl', 's9', {seq}, toStartOfHour(toDateTime(intDiv({t}, 1000000))), '10.0.0.1', 1)",
    )
    expiry["traffic_hourly_raw"] = expiry["dest_hourly_raw"] = rollup
    for t, (columns, value) in expiry.items():
        s.query(f"INSERT INTO tidewatch.{t} ({columns}) VALUES {value(101, old)}, {value(102, new)}")
        s.query(f"OPTIMIZE TABLE tidewatch.{t} FINAL")
        left = one(f"SELECT groupArray(batch_seq) FROM tidewatch.{t} WHERE sensor_id = 's9'")
        checks[f"ttl_expires_{t}"] = left == "[102]"
    s.query(f"INSERT INTO tidewatch.flows_raw ({cols}) VALUES "
            + row(103, 0, '10.0.0.7', 1).replace(str(now_us - 60_000_000), str(now_us - 100 * day), 1))
    s.query("OPTIMIZE TABLE tidewatch.flows_raw FINAL")
    checks["ttl_expires_flows_raw"] = one("SELECT count() FROM tidewatch.flows_raw WHERE batch_seq = 103") == "0"
    # A batch of flows on 300 consecutive days: one insert block is refused
    # with the server's default max_partitions_per_insert_block (100), the
    # sink's inserts of at most MAX_DAYS_PER_INSERT days each go through.
    max_days = int(sys.argv[3])
    span = [(d, now_us - (300 - d) * day) for d in range(300)]

    def days_row(d, t):
        return row(200, d, '10.0.0.6', 1).replace(str(now_us - 60_000_000), str(t), 1)

    try:
        s.query(f"INSERT INTO tidewatch.flows_raw ({cols}) VALUES " + ", ".join(days_row(d, t) for d, t in span))
        checks["one_insert_of_300_days_refused"] = False
    except Exception as e:  # noqa: BLE001 - chDB raises its own error type
        checks["one_insert_of_300_days_refused"] = "partitions" in str(e).lower()
    for i in range(0, 300, max_days):
        s.query(f"INSERT INTO tidewatch.flows_raw ({cols}) VALUES "
                + ", ".join(days_row(d, t) for d, t in span[i:i + max_days]))
    # Every insert went through (the TTL, 90 days of flows, drops the older
    # rows as they are written: count the last 80 days).
    checks["inserts_cut_by_days_go_through"] = one(
        f"SELECT count() FROM tidewatch.flows_raw WHERE batch_seq = 200 AND first_seen_us >= {now_us - 80 * day}") == "80"
    s.query("USE tidewatch")  # the query, like the collector, uses the default database
    top = one(query.strip().rstrip(";"))
    lines = top.splitlines()
    checks["top_talkers_rows"] = len(lines) == 2
    checks["top_talkers_order"] = bool(lines) and lines[0].split("\t")[2] == "10.0.0.8" and lines[0].split("\t")[-1] == "1000"
    print(json.dumps({"chdb_version": version, "checks": checks, "top_talkers": lines}))
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
