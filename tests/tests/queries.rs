//! The analysts' query pack against ground truth: the synthetic fleet
//! (4 vessels x 3 days, anomalies planted on the last day) goes through the
//! real pipeline into ClickHouse 18.16, then every query runs through
//! `tidewatch-collector query NAME` over the last day. Each must find every
//! planted anomaly of its kind, with at most the stated false positives on
//! the baseline traffic.

use std::collections::BTreeSet;

use serde_json::Value;
use tidewatch_tests::fleet::{Fleet, Spec};
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

#[test]
fn every_query_finds_every_planted_anomaly_with_few_false_positives() {
    let stack = Stack::start();
    stack.migrate();
    let pki = Pki::new(stack.path().join("pki"));
    let port = free_port();
    let _ingest = stack.ingest(&pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    let fleet = Fleet::new(Spec::default());
    let want = tidewatch_tests::fleet::load(&stack, &pki, port, &fleet);
    expect_flows(&stack, &want);
    let t = &fleet.truth;
    let p = Pack {
        stack: &stack,
        since: t.window_start_s,
        until: t.window_start_s + 86_400,
    };

    let key2 = |rows: &[Value], a: &str, b: &str| -> BTreeSet<String> {
        rows.iter()
            .map(|r| format!("{} {}", s(&r[a]), s(&r[b])))
            .collect()
    };

    let rows = p.run("new-destinations", &[]);
    judge(
        "new-destinations",
        key2(&rows, "vessel", "server_ip"),
        t.new_destinations
            .iter()
            .map(|(v, ip)| format!("{v} {ip}"))
            .collect(),
        0,
    );

    let rows = p.run("volume-spikes", &[]);
    judge(
        "volume-spikes",
        key2(&rows, "vessel", "server_ip"),
        t.volume_spikes
            .iter()
            .map(|(v, _, dst, _)| format!("{v} {dst}"))
            .collect(),
        0,
    );

    let rows = p.run("beaconing", &[]);
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

    let rows = p.run("ot-writes", &[]);
    judge(
        "ot-writes",
        key2(&rows, "vessel", "client_ip"),
        t.unexpected_ot_writes
            .iter()
            .map(|(v, c, _)| format!("{v} {c}"))
            .collect(),
        0,
    );
    // An operator-listed engineering host is not reported.
    let writer = &t.unexpected_ot_writes[0].1;
    assert!(p
        .run("ot-writes", &["--engineering-host", writer])
        .is_empty());

    let rows = p.run("segmentation", &[]);
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

    let rows = p.run("scans", &[]);
    judge(
        "scans",
        key2(&rows, "vessel", "client_ip"),
        t.scans.iter().map(|(v, c)| format!("{v} {c}")).collect(),
        0,
    );

    let rows = p.run("asset-changes", &[]);
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
    judge("asset-changes", got, planted, 0);

    let rows = p.run("campaigns", &[]);
    judge(
        "campaigns",
        rows.iter().map(|r| s(&r["server_ip"])).collect(),
        t.campaigns.iter().map(|(d, _)| d.clone()).collect(),
        0,
    );
    assert_eq!(s(&rows[0]["vessels"]), fleet.sensors.len().to_string());

    let rows = p.run("sensor-health", &[]);
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
    assert!(sql.contains("toDateTime(1767398400)"), "{sql}");
}
