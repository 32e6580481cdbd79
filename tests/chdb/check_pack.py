#!/usr/bin/env python3
"""Runs the analysts' query pack on chDB (an in-process modern ClickHouse
from PyPI) over data exported from the 18.16 server, so the same queries are
checked on both engines against the same ground truth.

  check_pack.py SCHEMA.sql DATA_DIR QUERY.sql...

SCHEMA.sql is `tidewatch-collector migrate --print --server-version 26.9`;
DATA_DIR holds TABLE.jsonl (JSONEachRow, stored columns only) for the raw
tables; each QUERY.sql is a `tidewatch-collector query NAME --print-sql`
output. Prints {"chdb_version": ..., "results": {NAME: [rows...]}}.
"""
import json
import os
import sys

from chdb import session


def statements(text):
    body = "\n".join(l for l in text.splitlines() if not l.strip().startswith("--"))
    return [s.strip() for s in body.split(";\n") if s.strip().rstrip(";").strip()]


def main():
    schema, data_dir, queries = sys.argv[1], sys.argv[2], sys.argv[3:]
    s = session.Session()
    version = s.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')
    for st in statements(open(schema).read()):
        s.query(st.rstrip(";"))
    for f in sorted(os.listdir(data_dir)):
        table = f[: -len(".jsonl")]
        cols = s.query(
            "SELECT name, type FROM system.columns WHERE database = 'tidewatch' "
            f"AND table = '{table}' AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') ORDER BY position",
            "JSONEachRow",
        ).bytes().decode().splitlines()
        structure = ", ".join(f"{c['name']} {c['type']}" for c in map(json.loads, cols))
        path = os.path.join(data_dir, f)
        lines = sum(1 for _ in open(path))
        readable = int(s.query(
            f"SELECT count() FROM file('{path}', 'JSONEachRow', '{structure}')", "CSV"
        ).bytes().decode().strip())
        if readable != lines:
            sys.exit(f"{f}: {lines} lines but {readable} rows readable")
        s.query(
            f"INSERT INTO tidewatch.{table} SELECT * FROM file('{path}', 'JSONEachRow', '{structure}')"
        )
        stored = int(s.query(f"SELECT count() FROM tidewatch.{table}", "CSV").bytes().decode().strip())
        if stored == 0 and lines > 0:
            sys.exit(f"{table}: {lines} rows read, none stored")
    s.query("USE tidewatch")
    counts = {}
    for t in ("flows_raw", "flows", "traffic_hourly_raw", "assets", "sensor_status", "fleet_registry"):
        counts[t] = int(s.query(f"SELECT count() FROM {t}", "CSV").bytes().decode().strip())
    results = {}
    for q in queries:
        name = os.path.basename(q)[: -len(".sql")]
        sql = open(q).read().strip().rstrip(";")
        out = s.query(sql, "JSONEachRow").bytes().decode()
        results[name] = [json.loads(l) for l in out.splitlines() if l.strip()]
    print(json.dumps({"chdb_version": version, "rows": counts, "results": results}))


if __name__ == "__main__":
    main()
