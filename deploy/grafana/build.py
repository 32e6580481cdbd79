#!/usr/bin/env python3
"""Builds the Grafana dashboard (deploy/grafana/tidewatch-fleet.json) from the
query pack in deploy/clickhouse/queries/, so the panels run exactly the SQL
`tidewatch-collector query NAME` runs.

  deploy/grafana/build.py           write the dashboard
  deploy/grafana/build.py --check   exit 1 if the file is not up to date

Data source: the ClickHouse plugin for Grafana (grafana-clickhouse-datasource),
picked with the dashboard's `datasource` variable; the default database must
be `tidewatch`. The time picker is the detection window; the baseline is the
`baseline_days` before it; `vessel` narrows every panel (empty: all). Only
$__fromTime and $__toTime are used: the plugin's interval macros expand to
functions ClickHouse 18.16 lacks.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
QUERIES = os.path.join(HERE, "..", "clickhouse", "queries")
OUT = os.path.join(HERE, "tidewatch-fleet.json")

# Query name, panel title, default thresholds (as `tidewatch-collector query`).
PACK = [
    ("new-destinations", "New external destinations", {}),
    ("volume-spikes", "Outbound volume spikes", {"min_bytes": "100000000", "sigmas": "4"}),
    ("beaconing", "Beaconing", {"min_count": "20", "max_jitter": "0.1", "max_size_cv": "0.05", "min_period_s": "10"}),
    ("ot-writes", "OT writes from non-engineering hosts", {"engineering_hosts": "CAST([] AS Array(String))"}),
    ("segmentation", "Connections into OT zones from outside", {}),
    ("scans", "Scans", {"min_targets": "100"}),
    ("remote-access", "Remote-access sessions into OT and navigation zones", {}),
    ("bridge-450", "IEC 61162-450 bridge network findings", {}),
    ("asset-changes", "New assets, changed vendors and firmware", {}),
    ("campaigns", "Fleet-wide campaigns", {"min_vessels": "3", "spread_s": "7200"}),
    ("sensor-health", "Sensor health", {"silence_s": "7200", "min_backlog": "1000"}),
]

COMMON = {
    "since": "toUInt32($__fromTime)",
    "until": "toUInt32($__toTime)",
    "baseline_since": "(toUInt32($__fromTime) - ${baseline_days} * 86400)",
    "vessel": "'${vessel}'",
}

DS = {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}


def render(name, extra):
    sql = open(os.path.join(QUERIES, name + ".sql")).read()
    values = dict(COMMON, **extra)

    def sub(m):
        key = m.group(1)
        if key not in values:
            sys.exit(f"{name}: no dashboard value for {{{key}}}")
        return values[key]

    return re.sub(r"\{([a-z_]+)\}", sub, sql).strip()


def overview(i, title, sql, unit, x, w):
    return {
        "id": i, "type": "timeseries", "title": title, "datasource": DS,
        "gridPos": {"h": 8, "w": w, "x": x, "y": 0},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": "A", "datasource": DS, "editorType": "sql", "format": 0,
                     "queryType": "timeseries", "rawSql": sql}],
    }


def build():
    panels = [
        overview(1, "Flows per vessel", (
            "SELECT hour AS time, vessel, sum(flows) AS flows_total\n"
            "FROM traffic_hourly_raw FINAL\n"
            "WHERE hour >= $__fromTime AND hour < $__toTime AND ('${vessel}' = '' OR vessel = '${vessel}')\n"
            "GROUP BY time, vessel ORDER BY time"), "short", 0, 8),
        overview(2, "Outbound bytes per vessel", (
            "SELECT hour AS time, vessel, sum(c2s_bytes) AS bytes_out\n"
            "FROM traffic_hourly_raw FINAL\n"
            "WHERE hour >= $__fromTime AND hour < $__toTime AND ('${vessel}' = '' OR vessel = '${vessel}')\n"
            "GROUP BY time, vessel ORDER BY time"), "bytes", 8, 8),
        overview(3, "Sensor backlog (records not yet acked)", (
            "SELECT toStartOfFiveMinute(observed_at) AS time, sensor_id, max(buffer_backlog_records) AS backlog\n"
            "FROM sensor_status\n"
            "WHERE observed_at >= $__fromTime AND observed_at < $__toTime AND ('${vessel}' = '' OR vessel = '${vessel}')\n"
            "GROUP BY time, sensor_id ORDER BY time"), "short", 16, 8),
    ]
    window = ("first_seen_us >= toUInt32($__fromTime) * 1000000 AND first_seen_us < toUInt32($__toTime) * 1000000"
              " AND ('${vessel}' = '' OR vessel = '${vessel}')")
    rows = 8 * ((len(PACK) + 1) // 2)
    alerts_rate = overview(30, "Alerts per vessel (per hour)", (
        "SELECT toStartOfHour(toDateTime(intDiv(first_seen_us, 1000000))) AS time, vessel, count() AS alerts\n"
        "FROM alerts\n"
        f"WHERE {window}\n"
        "GROUP BY time, vessel ORDER BY time"), "short", 0, 8)
    alerts_rate["gridPos"]["y"] = 8 + rows
    panels.append(alerts_rate)
    panels.append({
        "id": 31, "type": "table", "title": "Alerts and their handling", "datasource": DS,
        "description": "tidewatch-collector alerts list (handled with alerts ack|close|suppress)",
        "gridPos": {"h": 8, "w": 16, "x": 8, "y": 8 + rows},
        "targets": [{"refId": "A", "datasource": DS, "editorType": "sql", "format": 1, "queryType": "table",
                     "rawSql": (
                         "SELECT toString(toDateTime(intDiv(first_seen_us, 1000000))) AS first_seen, vessel, sensor_id,\n"
                         "    rule, severity, subject, summary, state, state_by, state_note, id\n"
                         "FROM alerts\n"
                         f"WHERE {window}\n"
                         "ORDER BY first_seen_us DESC LIMIT 500")}],
    })
    for n, (name, title, extra) in enumerate(PACK):
        panels.append({
            "id": 10 + n, "type": "table", "title": title, "datasource": DS,
            "description": f"tidewatch-collector query {name} (deploy/clickhouse/queries/{name}.sql)",
            "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 + 8 * (n // 2)},
            "targets": [{"refId": "A", "datasource": DS, "editorType": "sql", "format": 1,
                         "queryType": "table", "rawSql": render(name, extra)}],
        })
    return {
        "title": "tidewatch fleet",
        "uid": "tidewatch-fleet",
        "description": "Fleet overview and the analysts' anomaly query pack (generated by deploy/grafana/build.py)",
        "tags": ["tidewatch", "ot-security"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "grafana-clickhouse-datasource",
             "label": "ClickHouse"},
            {"name": "vessel", "type": "textbox", "label": "Vessel (empty: all)", "query": "",
             "current": {"text": "", "value": ""}},
            {"name": "baseline_days", "type": "textbox", "label": "Baseline days", "query": "14",
             "current": {"text": "14", "value": "14"}},
        ]},
        "panels": panels,
    }


def main():
    text = json.dumps(build(), indent=2) + "\n"
    if "--check" in sys.argv:
        current = open(OUT).read() if os.path.exists(OUT) else ""
        if current != text:
            sys.exit(f"{OUT} is out of date: run deploy/grafana/build.py")
        print(f"{OUT}: up to date ({len(build()['panels'])} panels)")
        return
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
