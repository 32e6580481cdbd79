//! Threat intel against the real ClickHouse: STIX, MISP and list feeds
//! loaded (bad feeds refused whole, with the place of the error), and the
//! retro-hunt over stored flows finds exactly the planted contacts, by hand
//! (`intel hunt`) and by the detector (alerts), which then matches live.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::Value;
use tidewatch_proto::v1::AckStatus;
use tidewatch_tests::grpc::{flow, request_with, upload, ClientCert};
use tidewatch_tests::*;

/// The flows' time (made by `grpc::flow`): 2023-11-14.
const WINDOW: [&str; 4] = ["--since", "2023-11-14", "--until", "2023-11-16"];

const STIX: &str = r#"{"type": "bundle", "id": "bundle--5d0a", "objects": [
  {"type": "indicator", "spec_version": "2.1", "id": "indicator--c2", "name": "crane C2",
   "valid_from": "2026-11-28T00:00:00Z", "pattern_type": "stix",
   "pattern": "[ipv4-addr:value = '203.0.113.7'] OR [url:value = 'https://cdn.bad.example/p.bin']"},
  {"type": "indicator", "spec_version": "2.1", "id": "indicator--old", "name": "expired before the contact",
   "valid_from": "2023-01-01T00:00:00Z", "valid_until": "2023-06-01T00:00:00Z", "pattern_type": "stix",
   "pattern": "[ipv4-addr:value = '10.1.0.10']"},
  {"type": "indicator", "spec_version": "2.1", "id": "indicator--hash", "valid_from": "2026-11-28T00:00:00Z",
   "pattern_type": "stix", "pattern": "[file:hashes.'SHA-256' = 'e3b0c442']"}
]}"#;

const MISP: &str = r#"{"response": [{"Event": {"info": "Fake crane firmware updates", "uuid": "ev-1",
  "Attribute": [
    {"type": "ip-dst|port", "value": "192.0.2.50|4444", "uuid": "at-1"},
    {"type": "sha256", "value": "e3b0c442", "uuid": "at-2"}
  ],
  "Object": [{"name": "domain", "Attribute": [
    {"type": "hostname", "value": "update.crane-vendor.example", "uuid": "at-3"}]}]}}]}"#;

const LIST: &str = "# blocklist of a national CERT\nevil.example, phishing\n198.51.100.77\n";

fn flow_to(i: u32, server: Ipv4Addr, names: &[&str]) -> tidewatch_proto::v1::FlowRecord {
    let mut f = flow(i);
    f.server_ip = server.octets().to_vec();
    f.indicators = names.iter().map(|n| n.to_string()).collect();
    f
}

#[test]
fn feeds_load_whole_or_not_at_all_and_the_hunt_finds_every_planted_contact() {
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let baseline = Ipv4Addr::new(10, 1, 0, 10);
    // Two vessels: planted contacts among ordinary flows.
    let plan = [
        (
            pki.sensor("bridge-1", "mv-aurora"),
            vec![
                flow_to(0, baseline, &[]),
                flow_to(1, Ipv4Addr::new(203, 0, 113, 7), &[]),
                flow_to(2, baseline, &["Update.Crane-Vendor.Example"]),
                flow_to(3, baseline, &["ok.example"]),
            ],
        ),
        (
            pki.sensor("crane-2", "port-of-kiel"),
            vec![
                flow_to(0, Ipv4Addr::new(192, 0, 2, 50), &[]),
                flow_to(1, baseline, &["cdn.bad.example"]),
                flow_to(2, baseline, &["evil.example"]),
                flow_to(3, Ipv4Addr::new(198, 51, 100, 78), &[]),
            ],
        ),
    ];
    for (cert, flows) in &plan {
        let acks = upload(
            port,
            &cert.ca,
            Some(ClientCert::of(cert)),
            vec![request_with(1, flows.clone())],
        )
        .unwrap();
        assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");
    }
    wait_until(std::time::Duration::from_secs(60), "flows stored", || {
        (stack.query_u64("SELECT count() FROM tidewatch.flows") == 8).then_some(())
    });

    let dir = stack.path();
    let intel = |args: &[&str]| {
        let out = stack.collector().arg("intel").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let count = || stack.query_u64("SELECT count() FROM tidewatch.intel_indicators");

    // Bad feeds: refused whole, the error names where.
    let bad = [
        (
            "bad-ip.json",
            STIX.replace("203.0.113.7", "203.0.113.700"),
            "objects[0] (indicator--c2): \"203.0.113.700\" is not an IP address",
        ),
        (
            "not-json.json",
            STIX.replace("\"objects\": [", "\"objects\": [,"),
            "line 1, column",
        ),
        (
            "bad-misp.json",
            MISP.replace("\"value\": \"192.0.2.50|4444\", ", ""),
            "response[0].Event.Attribute[0]: attribute without a \"value\"",
        ),
        ("bad-list.txt", LIST.replace("198.51", "198 51"), "line 3:"),
    ];
    for (name, text, want) in &bad {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let (ok, _, err) = intel(&["load", p.to_str().unwrap()]);
        assert!(!ok, "{name} loaded");
        assert!(
            err.contains(want) && err.contains("nothing loaded"),
            "{name}: {err}"
        );
    }
    assert_eq!(count(), 0, "a refused feed wrote indicators");

    // Good feeds: what can match a flow is loaded, the rest counted.
    for (name, text, want) in [
        ("cert-stix.json", STIX, "loaded 3 indicator(s)"),
        ("isac-misp.json", MISP, "loaded 2 indicator(s)"),
        ("cert-list.txt", LIST, "loaded 2 indicator(s)"),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let (ok, out, err) = intel(&["load", p.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(
            out.contains(want) && !out.contains("nothing"),
            "{name}: {out}"
        );
        if name != "cert-list.txt" {
            assert!(out.contains("1 skipped"), "{out}");
        }
    }
    // Loading a feed again replaces its rows.
    let (ok, _, err) = intel(&["load", dir.join("cert-list.txt").to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(count(), 7);

    // The retro-hunt: indicators published in 2026 find the 2023 contacts,
    // and only those (names compared in lowercase); the expired indicator
    // finds nothing, the near miss (198.51.100.78) neither.
    let hunt = |extra: &[&str]| -> Vec<(String, String, String)> {
        let (ok, out, err) = intel(&[&["hunt", "--format", "json"], &WINDOW[..], extra].concat());
        assert!(ok, "{err}");
        let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
        rows.iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap().to_string();
                (s("sensor_id"), s("matched"), s("source"))
            })
            .collect()
    };
    let got: BTreeSet<_> = hunt(&[]).into_iter().collect();
    let want: BTreeSet<(String, String, String)> = [
        ("bridge-1", "203.0.113.7", "cert-stix"),
        ("bridge-1", "update.crane-vendor.example", "isac-misp"),
        ("crane-2", "192.0.2.50", "isac-misp"),
        ("crane-2", "cdn.bad.example", "cert-stix"),
        ("crane-2", "evil.example", "cert-list"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(got, want);
    assert_eq!(hunt(&["--source", "isac-misp"]).len(), 2);
    assert!(hunt(&["--vessel", "mv-aurora"])
        .iter()
        .all(|(s, _, _)| s == "bridge-1"));
    let (ok, table, _) = intel(&[&["hunt"], &WINDOW[..]].concat());
    assert!(
        ok && table.contains("crane C2") && table.contains("port-of-kiel"),
        "{table}"
    );

    // The detector hunts each load once over stored history (here the
    // flows of 2023: a long --hunt-days) and raises the contacts as
    // alerts, one per vessel, indicator and hour.
    let mut cmd = stack.collector();
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, "scheduled: []\n").unwrap();
    cmd.args([
        "detect",
        "--refresh-secs",
        "1",
        "--max-wait-ms",
        "200",
        "--hunt-days",
        "1500",
        "--hunt-settle-secs",
        "1",
    ])
    .arg("--rules")
    .arg(&rules);
    let mut det = Proc::spawn("detect", dir, &mut cmd);
    det.wait_log("detector started", std::time::Duration::from_secs(60));
    let alerts = || -> BTreeSet<(String, String)> {
        stack
            .query("SELECT sensor_id, subject FROM tidewatch.alerts WHERE rule = 'intel-contact'")
            .unwrap()
            .lines()
            .map(|l| {
                let (a, b) = l.split_once('\t').unwrap();
                (a.to_string(), b.to_string())
            })
            .collect()
    };
    let subjects: BTreeSet<(String, String)> = [
        ("bridge-1", "203.0.113.7"),
        ("bridge-1", "update.crane-vendor.example"),
        ("crane-2", "192.0.2.50"),
        ("crane-2", "https://cdn.bad.example/p.bin"),
        ("crane-2", "evil.example"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    wait_until(
        std::time::Duration::from_secs(60),
        "the hunted alerts",
        || (alerts() == subjects).then_some(()),
    );
    wait_until(
        std::time::Duration::from_secs(30),
        "the loads recorded as hunted",
        || (stack.query_u64("SELECT count() FROM tidewatch.intel_hunts") == 3).then_some(()),
    );
    // Live: a contact with a listed address raises its alert as the batch
    // arrives; the same contact again as one already hunted (same vessel,
    // indicator and hour) raises nothing new.
    let (cert, _) = &plan[0];
    let live = vec![
        flow_to(5, Ipv4Addr::new(198, 51, 100, 77), &[]),
        flow_to(6, Ipv4Addr::new(203, 0, 113, 7), &[]),
    ];
    let acks = upload(
        port,
        &cert.ca,
        Some(ClientCert::of(cert)),
        vec![request_with(2, live)],
    )
    .unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");
    let mut with_live = subjects.clone();
    with_live.insert(("bridge-1".into(), "198.51.100.77".into()));
    wait_until(std::time::Duration::from_secs(60), "the live alert", || {
        (alerts() == with_live).then_some(())
    });
    det.wait_log(
        "rule=intel-contact vessel=mv-aurora sensor=bridge-1 subject=198.51.100.77",
        std::time::Duration::from_secs(10),
    );
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.alerts WHERE rule = 'intel-contact'"),
        6,
        "an alert stored twice"
    );
    assert!(det.terminate().is_some());
}
