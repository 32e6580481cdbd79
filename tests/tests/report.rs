//! `tidewatch-collector report e26` on the synthetic fleet (ClickHouse
//! 18.16): every planted item the report covers is in it and nothing else
//! is flagged, every figure names its query, its queries answer the same on
//! chDB (modern ClickHouse), and headless Chromium renders the page to PNG
//! and PDF with every section present.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tidewatch_tests::fleet::{Loaded, Spec};
use tidewatch_tests::*;

/// The report of `vessel` over the fleet's detection window.
fn report(loaded: &Loaded, vessel: &str, out: &Path) -> Value {
    let printed = loaded.report_e26(vessel, out, &[]);
    assert!(printed.contains("E26 report of"), "{printed}");
    let json = std::fs::read_to_string(out.join(format!("e26-{vessel}.json"))).unwrap();
    serde_json::from_str(&json).unwrap()
}

fn rows<'a>(r: &'a Value, section: &str) -> &'a [Value] {
    r["sections"][section]["rows"].as_array().unwrap()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

#[test]
fn the_e26_report_shows_each_planted_item_and_renders_to_png_and_pdf() {
    let loaded = Loaded::start(Spec::default());
    let fleet = &loaded.fleet;
    let t = &fleet.truth;
    let dir = tempfile::tempdir().unwrap();
    let vessel = |i: usize| fleet.sensors[i].vessel.clone();

    // The detection service raises its streaming alerts over the fleet;
    // one of vessel 2's is acknowledged, for the record.
    let v2 = vessel(2);
    let id = loaded.acknowledged_intrusion_alert();

    // Vessel 2: the 61162-450 bridge network's planted faults, exactly.
    let r = report(&loaded, &v2, dir.path());
    let alarms = rows(&r, "alarms");
    let acked = alarms
        .iter()
        .find(|a| s(&a["id"]) == id)
        .unwrap_or_else(|| panic!("alert {id} not in {alarms:#?}"));
    assert_eq!(
        (
            s(&acked["state"]),
            s(&acked["state_by"]),
            s(&acked["state_note"])
        ),
        (
            "acknowledged".into(),
            "chief-engineer".into(),
            "vendor maintenance window, ticket 88".into()
        )
    );
    assert!(
        alarms.iter().all(|a| s(&a["rule"]) != "ot-write"),
        "vessel 1's write is not vessel 2's"
    );
    assert_eq!(rows(&r, "sensors").len(), 1);
    let got: std::collections::BTreeSet<String> = rows(&r, "bridge_450")
        .iter()
        .map(|x| {
            format!(
                "{} {} {}",
                s(&x["finding"]),
                s(&x["client_ip"]),
                s(&x["server_ip"])
            )
        })
        .collect();
    let want: std::collections::BTreeSet<String> = t
        .bridge_450
        .iter()
        .filter(|(v, ..)| *v == v2)
        .map(|(_, f, c, srv)| format!("{f} {c} {srv}"))
        .collect();
    assert_eq!(got, want);
    // Coverage: the sensor reported every hour of the window.
    let cov = &rows(&r, "coverage")[0];
    assert_eq!(s(&cov["hours_reporting"]), "24", "{cov}");
    assert_eq!(s(&cov["silences"]), "0", "{cov}");
    assert_eq!(s(&cov["records_dropped"]), "5000", "{cov}");
    // Inventory: what the PLCs said, and unknown where they said nothing.
    let inv = rows(&r, "inventory");
    let plc = |host: &str| {
        inv.iter()
            .find(|a| s(&a["ip"]) == format!("10.2.1.{host}"))
            .unwrap_or_else(|| panic!("no 10.2.1.{host} in {inv:#?}"))
    };
    assert_eq!(s(&plc("14")["product"]), "6ES7 315-2EH14-0AB0");
    assert_eq!(s(&plc("14")["firmware"]), "V3.2.7");
    assert_eq!(s(&plc("14")["zone"]), "ot");
    assert_eq!(s(&plc("11")["product"]), "");
    // The vendor change planted on vessel 2 is an inventory change.
    assert!(rows(&r, "inventory_changes")
        .iter()
        .any(|c| s(&c["change"]) == "vendor_changed" && s(&c["ip"]) == "10.2.1.12"));
    // Crossings: the inbound Modbus from ashore is not allowed; what the
    // registry's conduits cover is.
    let crossings = rows(&r, "crossings");
    let denied: Vec<String> = crossings
        .iter()
        .filter(|c| c["allowed"] == false)
        .map(|c| {
            format!(
                "{}>{}:{}",
                s(&c["client_zone"]),
                s(&c["server_zone"]),
                s(&c["server_port"])
            )
        })
        .collect();
    assert_eq!(denied, ["outside>ot:502"], "{crossings:#?}");
    assert!(crossings.iter().any(|c| c["allowed"] == true
        && s(&c["client_zone"]) == "crew"
        && s(&c["server_zone"]) == "outside"));
    assert!(rows(&r, "remote_access").is_empty());

    // Vessel 1: the VNC session from the crew zone and the firmware change.
    let v1 = vessel(1);
    let r1 = report(&loaded, &v1, dir.path());
    let ra = rows(&r1, "remote_access");
    assert_eq!(ra.len(), 1, "{ra:#?}");
    assert_eq!(
        (
            s(&ra[0]["client_ip"]),
            s(&ra[0]["app_protocol"]),
            s(&ra[0]["duration_s"])
        ),
        ("10.1.3.40".into(), "vnc".into(), "300".into())
    );
    assert!(rows(&r1, "inventory_changes")
        .iter()
        .any(|c| s(&c["change"]) == "firmware_changed" && s(&c["ip"]) == "10.1.1.13"));
    assert!(
        rows(&r1, "bridge_450").is_empty(),
        "the bridge faults are vessel 2's"
    );

    // Every section names a query of the appendix, whose SQL is the one run.
    let ids: Vec<String> = r["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| s(&q["id"]))
        .collect();
    for (key, sec) in r["sections"].as_object().unwrap() {
        assert!(ids.contains(&s(&sec["query"])), "{key} names no query");
    }
    let inventory_sql = r["queries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "e26-inventory")
        .unwrap();
    assert!(s(&inventory_sql["sql"]).contains(&format!("vessel = '{v2}'")));

    // The same report queries on a modern ClickHouse (chDB) over the same
    // data give the same answers.
    let printed = loaded.report_e26(&v2, dir.path(), &["--print-sql"]);
    let mut sqls: Vec<(String, String)> = Vec::new();
    for line in printed.lines() {
        match line.strip_prefix("-- Q").and_then(|l| l.split_once(": ")) {
            Some((_, name)) => sqls.push((name.to_string(), String::new())),
            None => {
                let (_, sql) = sqls.last_mut().expect("a -- Qn: line first");
                sql.push_str(line);
                sql.push('\n');
            }
        }
    }
    assert_eq!(sqls.len(), r["queries"].as_array().unwrap().len());
    let modern = tidewatch_tests::chdb::run(&loaded.stack, dir.path(), &sqls);
    let keyed = |rows: &[Value], keys: &[&str]| -> std::collections::BTreeSet<String> {
        rows.iter()
            .map(|x| keys.iter().map(|k| s(&x[*k])).collect::<Vec<_>>().join(" "))
            .collect()
    };
    for (section, name, keys) in [
        (
            "bridge_450",
            "bridge-450",
            &["finding", "client_ip", "server_ip", "detail"][..],
        ),
        (
            "inventory",
            "e26-inventory",
            &["ip", "zone", "mac", "product", "firmware", "serial"][..],
        ),
        (
            "crossings",
            "e26-crossings",
            &[
                "client_zone",
                "server_zone",
                "server_port",
                "app_protocol",
                "flows",
                "bytes",
            ][..],
        ),
        (
            "coverage",
            "e26-coverage",
            &[
                "sensor_id",
                "reports",
                "hours_reporting",
                "silences",
                "longest_gap_s",
            ][..],
        ),
        ("bandwidth", "e26-bandwidth", &["zone", "hour", "bytes"][..]),
        ("inventory_changes", "asset-changes", &["ip", "change"][..]),
        ("sensors", "e26-sensors", &["sensor_id", "site", "role"][..]),
    ] {
        let on_chdb = modern["results"][name]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            keyed(&on_chdb, keys),
            keyed(rows(&r, section), keys),
            "{section} differs on chDB {}",
            modern["chdb_version"]
        );
    }

    // Rendered as a person would see it: a page with every section, to PNG
    // and PDF.
    let html = dir.path().join(format!("e26-{v2}.html"));
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(!text.contains("<script"), "self-contained, no scripts");
    for fetch in ["src=", "<link", "url(", "@import"] {
        assert!(!text.contains(fetch), "nothing fetched: {fetch}");
    }
    let url = format!("file://{}", html.display());
    let png = dir.path().join("e26.png");
    let pdf = dir.path().join("e26.pdf");
    chromium(&[
        "--window-size=1280,3000",
        &format!("--screenshot={}", png.display()),
        &url,
    ]);
    chromium(&[
        "--no-pdf-header-footer",
        &format!("--print-to-pdf={}", pdf.display()),
        &url,
    ]);
    let png_bytes = std::fs::read(&png).unwrap();
    assert!(png_bytes.starts_with(b"\x89PNG"), "not a PNG");
    // A blank 1280 x 3000 page compresses to a few kB; this one has tables,
    // charts and text.
    assert!(
        png_bytes.len() > 60_000,
        "PNG of {} bytes: empty page?",
        png_bytes.len()
    );
    let out = Command::new("pdftotext")
        .arg(&pdf)
        .arg("-")
        .output()
        .unwrap();
    assert!(out.status.success());
    let pdf_text = String::from_utf8_lossy(&out.stdout);
    for title in [
        "Vessel and sensors",
        "Monitoring coverage",
        "Inventory",
        "Zones and conduits",
        "Remote access",
        "Bandwidth per zone",
        "IEC 61162-450 bridge network",
        "Alarms and their handling",
        "Appendix: the queries",
        "6ES7 315-2EH14-0AB0",
        "sfi_conflict",
    ] {
        assert!(
            pdf_text.contains(title),
            "{title:?} not in the PDF:\n{pdf_text}"
        );
    }
    let pages = Command::new("pdfinfo").arg(&pdf).output().unwrap();
    let info = String::from_utf8_lossy(&pages.stdout);
    let n: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    assert!(n >= 2, "{info}");
}
