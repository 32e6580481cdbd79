//! The analysts' query pack against ground truth: the synthetic fleet
//! (4 vessels x 3 days, anomalies planted on the last day) goes through the
//! real pipeline into ClickHouse 18.16, then every query runs through
//! `tidewatch-collector query NAME` over the last day. Each must find every
//! planted anomaly of its kind, with at most the stated false positives on
//! the baseline traffic.

use std::collections::BTreeSet;

use serde_json::Value;
use tidewatch_collector::query::pack::PACK;
use tidewatch_tests::fleet::{self, Loaded, Spec, Truth};
use tidewatch_tests::*;

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

struct Pack<'a> {
    stack: &'a Stack,
    since: i64,
    until: i64,
}

impl Pack<'_> {
    fn run(&self, name: &str, extra: &[&str]) -> Vec<Value> {
        let out = run_ok(
            self.stack
                .collector()
                .args(["query", name, "--format", "json"])
                .args(["--since", &self.since.to_string()])
                .args(["--until", &self.until.to_string()])
                .args(extra),
        );
        serde_json::from_str::<Vec<Value>>(out.trim())
            .unwrap_or_else(|e| panic!("{name}: not a JSON array ({e}):\n{out}"))
    }
}

/// Found every expected key, and at most `max_fp` others.
fn judge(name: &str, got: BTreeSet<String>, want: BTreeSet<String>, max_fp: usize) {
    let missed: Vec<_> = want.difference(&got).collect();
    let fp: Vec<_> = got.difference(&want).collect();
    println!(
        "{name}: {} planted, {} found, {} false positives (allowed {max_fp})",
        want.len(),
        want.len() - missed.len(),
        fp.len()
    );
    assert!(
        missed.is_empty(),
        "{name} missed {missed:?}; it found {got:?}"
    );
    assert!(fp.len() <= max_fp, "{name}: false positives {fp:?}");
}

/// Runs every query through `run` and judges it against the truth.
fn judge_pack(engine: &str, t: &Truth, vessels: usize, run: &dyn Fn(&str, &[&str]) -> Vec<Value>) {
    println!("-- {engine}");
    let key2 = |rows: &[Value], a: &str, b: &str| -> BTreeSet<String> {
        rows.iter()
            .map(|r| format!("{} {}", s(&r[a]), s(&r[b])))
            .collect()
    };

    let rows = run("new-destinations", &[]);
    judge(
        "new-destinations",
        key2(&rows, "vessel", "server_ip"),
        t.new_destinations
            .iter()
            .map(|(v, ip)| format!("{v} {ip}"))
            .collect(),
        0,
    );

    let rows = run("volume-spikes", &[]);
    judge(
        "volume-spikes",
        key2(&rows, "vessel", "server_ip"),
        t.volume_spikes
            .iter()
            .map(|(v, _, dst, _)| format!("{v} {dst}"))
            .collect(),
        0,
    );

    let rows = run("beaconing", &[]);
    judge(
        "beaconing",
        rows.iter()
            .map(|r| {
                format!(
                    "{} {} {}:{}",
                    s(&r["vessel"]),
                    s(&r["client_ip"]),
                    s(&r["server_ip"]),
                    s(&r["server_port"])
                )
            })
            .collect(),
        t.beacons
            .iter()
            .map(|(v, c, d)| format!("{v} {c} {d}"))
            .collect(),
        0,
    );
    let period: f64 = s(&rows[0]["period_s"]).parse().unwrap();
    assert!((59.0..61.0).contains(&period), "beacon period {period}");

    let rows = run("ot-writes", &[]);
    judge(
        "ot-writes",
        key2(&rows, "vessel", "client_ip"),
        t.unexpected_ot_writes
            .iter()
            .map(|(v, c, _)| format!("{v} {c}"))
            .collect(),
        0,
    );

    let rows = run("segmentation", &[]);
    judge(
        "segmentation",
        key2(&rows, "vessel", "client_ip"),
        t.segmentation_breaks
            .iter()
            .map(|(v, c, _)| format!("{v} {c}"))
            .collect(),
        0,
    );
    assert!(rows
        .iter()
        .any(|r| s(&r["client_zone"]) == "crew" && s(&r["server_zone"]) == "ot"));
    assert!(rows.iter().any(|r| s(&r["client_zone"]) == "outside"));

    let rows = run("scans", &[]);
    judge(
        "scans",
        key2(&rows, "vessel", "client_ip"),
        t.scans.iter().map(|(v, c)| format!("{v} {c}")).collect(),
        0,
    );

    let rows = run("remote-access", &[]);
    judge(
        "remote-access",
        rows.iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    s(&r["vessel"]),
                    s(&r["client_ip"]),
                    s(&r["server_ip"]),
                    s(&r["app_protocol"])
                )
            })
            .collect(),
        t.remote_access
            .iter()
            .map(|(v, c, srv, p)| format!("{v} {c} {srv} {p}"))
            .collect(),
        0,
    );
    // Who, from where, when, how long, how many bytes: the SSH session
    // from ashore as planted.
    let ssh = rows
        .iter()
        .find(|r| s(&r["app_protocol"]) == "ssh")
        .unwrap();
    assert_eq!(
        (
            s(&ssh["client_zone"]),
            s(&ssh["server_zone"]),
            s(&ssh["duration_s"])
        ),
        ("outside".into(), "ot".into(), "1500".into()),
        "{ssh}"
    );
    assert_eq!(s(&ssh["bytes_to_client"]), "13500000", "{ssh}");

    let rows = run("bridge-450", &[]);
    judge(
        "bridge-450",
        rows.iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    s(&r["vessel"]),
                    s(&r["finding"]),
                    s(&r["client_ip"]),
                    s(&r["server_ip"])
                )
            })
            .collect(),
        t.bridge_450
            .iter()
            .map(|(v, f, c, srv)| format!("{v} {f} {c} {srv}"))
            .collect(),
        0,
    );
    let detail = |finding: &str| {
        rows.iter()
            .find(|r| s(&r["finding"]) == finding)
            .map(|r| s(&r["detail"]))
            .unwrap_or_default()
    };
    assert_eq!(
        detail("bad_tag_checksum"),
        "12 TAG blocks with a bad or missing checksum"
    );
    assert_eq!(detail("sfi_conflict"), "GP0001");
    assert_eq!(detail("wrong_group"), "target sentences in NAVD");
    assert_eq!(detail("non_450_in_reserved"), "app protocol unknown");
    assert_eq!(detail("binary_transfer"), "binary_image_RaUdP");

    let rows = run("asset-changes", &[]);
    let got: BTreeSet<String> = rows
        .iter()
        .map(|r| format!("{} {} {}", s(&r["vessel"]), s(&r["ip"]), s(&r["change"])))
        .collect();
    let mut planted: BTreeSet<String> = t
        .new_assets
        .iter()
        .map(|(v, ip)| format!("{v} {ip} new_asset"))
        .collect();
    planted.extend(
        t.changed_vendors
            .iter()
            .map(|(v, ip, _, _)| format!("{v} {ip} vendor_changed")),
    );
    planted.extend(
        t.changed_firmware
            .iter()
            .map(|(v, ip, _, _)| format!("{v} {ip} firmware_changed")),
    );
    for (v, ip, old, new) in &t.changed_firmware {
        let row = rows
            .iter()
            .find(|r| s(&r["vessel"]) == *v && s(&r["ip"]) == *ip)
            .unwrap();
        assert_eq!(row["old_firmware"], serde_json::json!([old]), "{row}");
        assert_eq!(row["new_firmware"], serde_json::json!([new]), "{row}");
    }
    judge("asset-changes", got, planted, 0);

    let rows = run("campaigns", &[]);
    judge(
        "campaigns",
        rows.iter().map(|r| s(&r["server_ip"])).collect(),
        t.campaigns.iter().map(|(d, _)| d.clone()).collect(),
        0,
    );
    assert_eq!(s(&rows[0]["vessels"]), vessels.to_string());

    let rows = run("sensor-health", &[]);
    let got: BTreeSet<String> = rows
        .iter()
        .flat_map(|r| {
            let id = s(&r["sensor_id"]);
            r["problems"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |x| format!("{id} {}", s(x)))
                .collect::<Vec<_>>()
        })
        .collect();
    judge(
        "sensor-health",
        got,
        t.sensor_health
            .iter()
            .map(|(id, what)| format!("{id} {what}"))
            .collect(),
        0,
    );
}

#[test]
fn every_query_finds_every_planted_anomaly_with_few_false_positives() {
    let loaded = Loaded::start(Spec::default());
    let (stack, fleet, want) = (&loaded.stack, &loaded.fleet, &loaded.want);
    let t = &fleet.truth;
    let p = Pack {
        stack,
        since: t.window_start_s,
        until: t.window_start_s + 86_400,
    };

    judge_pack("ClickHouse 18.16", t, fleet.sensors.len(), &|n, a| {
        p.run(n, a)
    });
    // An operator-listed engineering host is not reported.
    let writer = &t.unexpected_ot_writes[0].1;
    assert!(p
        .run("ot-writes", &["--engineering-host", writer])
        .is_empty());

    // Tables fit the terminal: long cells are cut (marked …) to the width
    // in COLUMNS; the same rows print whole with COLUMNS wide enough.
    let table = |columns: usize| {
        let out = p
            .stack
            .collector()
            .args(["query", "ot-writes", "--format", "table"])
            .args([
                "--since",
                &p.since.to_string(),
                "--until",
                &p.until.to_string(),
            ])
            .env("COLUMNS", columns.to_string())
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (wide, _) = table(100_000);
    let widest = wide.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(widest > 80, "ot-writes fits in 80 columns anyway:\n{wide}");
    let (narrow, note) = table(80);
    assert!(note.contains("cut to fit 80 columns"), "{note}");
    assert_eq!(narrow.lines().count(), wide.lines().count());
    for l in narrow.lines() {
        assert!(l.chars().count() <= 80, "line over 80 columns: {l:?}");
    }
    assert!(narrow.contains('…'), "{narrow}");

    // --vessel narrows every query to one vessel.
    let v0 = &fleet.sensors[0].vessel;
    let rows = p.run("new-destinations", &["--vessel", v0]);
    assert!(!rows.is_empty() && rows.iter().all(|r| s(&r["vessel"]) == *v0));
    // --print-sql shows the query with the values filled in.
    let sql = run_ok(stack.collector().args([
        "query",
        "scans",
        "--since",
        "2026-01-03",
        "--min-targets",
        "50",
        "--print-sql",
    ]));
    assert!(sql.contains("HAVING targets >= 50"), "{sql}");
    assert!(
        sql.contains("first_seen_us >= 1767398400 * 1000000"),
        "{sql}"
    );

    // The Grafana dashboard (generated from the same SQL files, kept up to
    // date) runs on the server with Grafana's macros filled in.
    run_ok(
        std::process::Command::new("python3")
            .arg(root().join("deploy/grafana/build.py"))
            .arg("--check"),
    );
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/tidewatch-fleet.json")).unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert_eq!(
        panels.len(),
        3 + queries().len() + 2,
        "overview, pack, alerts"
    );
    // One alert in the window, for the alert panels to show.
    stack
        .query(&format!(
            "INSERT INTO tidewatch.alerts_raw (id, rule, severity, vessel, sensor_id, subject, bucket_start, \
             first_seen_us, summary, evidence, raised_at) VALUES ('a1', 'intel-contact', 'high', '{}', 's', \
             '203.0.113.7', {since}, {since}000001, 'test', '{{}}', {since})",
            fleet.sensors[0].vessel,
            since = p.since
        ))
        .unwrap();
    for panel in panels {
        let sql = panel["targets"][0]["rawSql"]
            .as_str()
            .unwrap()
            .replace("$__fromTime", &format!("toDateTime({})", p.since))
            .replace("$__toTime", &format!("toDateTime({})", p.until))
            .replace("${vessel}", "")
            .replace("${baseline_days}", "14");
        let out = stack
            .query_tidewatch(&format!("{sql}\nFORMAT JSONEachRow"))
            .unwrap_or_else(|e| panic!("panel {}: {e}\n{sql}", panel["title"]));
        assert!(
            !out.trim().is_empty(),
            "panel {} returned nothing",
            panel["title"]
        );
    }

    // The same queries on a modern ClickHouse (chDB), over the same data
    // exported from the 18.16 server, against the same truth.
    let tmp = tempfile::tempdir().unwrap();
    let sqls: Vec<(String, String)> = queries()
        .into_iter()
        .map(|name| {
            let sql = run_ok(
                stack
                    .collector()
                    .args(["query", name, "--print-sql"])
                    .args(["--since", &p.since.to_string()])
                    .args(["--until", &p.until.to_string()]),
            );
            (name.to_string(), sql)
        })
        .collect();
    let out = tidewatch_tests::chdb::run(stack, tmp.path(), &sqls);
    println!("chDB rows: {}", out["rows"]);
    assert_eq!(
        out["rows"]["flows"].as_u64(),
        Some(want.values().map(|t| t.flows).sum::<u64>()),
        "chDB did not get every flow: {}",
        out["rows"]
    );
    let results = out["results"].clone();
    judge_pack(
        &format!("chDB {}", s(&out["chdb_version"])),
        t,
        fleet.sensors.len(),
        &|n, _| results[n].as_array().cloned().unwrap_or_default(),
    );
}

/// The pack's query names, from the collector itself.
fn queries() -> Vec<&'static str> {
    PACK.iter().map(|q| q.name).collect()
}

#[test]
fn retention_drops_only_partitions_past_it_and_keeps_rollups_longer() {
    let loaded = Loaded::start(Spec::default());
    let (stack, want) = (&loaded.stack, &loaded.want);
    let total: u64 = want.values().map(|t| t.flows).sum();
    wait_until(std::time::Duration::from_secs(60), "the rollup", || {
        (stack.query_u64("SELECT sum(flows) FROM tidewatch.traffic_hourly") == total).then_some(())
    });
    // Keep raw flows back to 2026-01-02: the fleet's first day goes.
    let keep = fleet::retention_keeping_from(1_767_312_000);
    let args = |dry: bool| {
        let mut c = stack.collector();
        c.args(["maintenance", "retention", "--flow-retention-days", &keep])
            .args(["--rollup-retention-days", "3650"]);
        if dry {
            c.arg("--dry-run");
        }
        c
    };
    let dry = run_ok(&mut args(true));
    assert_eq!(
        dry.trim(),
        format!("would drop tidewatch.flows_raw partition 20260101 (older than {keep} days)"),
    );
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.flows"),
        total
    );
    let out = run_ok(&mut args(false));
    assert!(out.contains("retention: 1 partition(s) dropped"), "{out}");
    let day1 = stack.query_u64(
        "SELECT count() FROM tidewatch.flows WHERE toDate(first_seen) = toDate('2026-01-01')",
    );
    assert_eq!(day1, 0);
    let left = stack.query_u64("SELECT count() FROM tidewatch.flows");
    assert!(left > 0 && left < total, "{left} of {total}");
    // The rollups (kept longer) still hold the first day.
    assert_eq!(
        stack.query_u64("SELECT sum(flows) FROM tidewatch.traffic_hourly"),
        total
    );
    // Bad retention is refused.
    let bad = stack
        .collector()
        .args(["maintenance", "retention", "--flow-retention-days", "90"])
        .args(["--rollup-retention-days", "30"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("at least as long"));
    // Past the rollup retention as well, every table drops its expired
    // partitions: the fleet's month (January 2026) goes from the rollups,
    // the assets and the sensor status too.
    let keep_none = fleet::retention_keeping_from(1_769_904_000); // since 2026-02-01
    let out = run_ok(stack.collector().args([
        "maintenance",
        "retention",
        "--flow-retention-days",
        &keep_none,
        "--rollup-retention-days",
        &keep_none,
    ]));
    for t in [
        "flows_raw",
        "traffic_hourly_raw",
        "dest_hourly_raw",
        "assets_raw",
        "sensor_status_raw",
    ] {
        assert!(
            out.contains(&format!("dropped tidewatch.{t} partition")),
            "{t}: nothing dropped\n{out}"
        );
        assert_eq!(
            stack.query_u64(&format!("SELECT count() FROM tidewatch.{t}")),
            0,
            "{t} still holds rows past its retention"
        );
    }
}
