//! `tidewatch-collector report e26`: the evidence a class surveyor asks of
//! a vessel under IACS UR E26 (and E27 for its systems), as one
//! self-contained HTML file (inline SVG charts, prints cleanly to PDF) and
//! the same data as JSON:
//!
//! - the vessel and its sensors (fleet registry), and the monitoring
//!   coverage: reports, silences, what the sensors lost (§4.3.1);
//! - the inventory with the E27 fields as far as devices said them, unknown
//!   stated as unknown, and its changes in the window (§4.1.1);
//! - zones and conduits: every observed zone crossing against the
//!   registry's allowed conduits (§4.2.1);
//! - remote-access sessions (§4.2.6);
//! - bandwidth per zone with the hours over a threshold;
//! - the IEC 61162-450 bridge network's findings;
//! - alarms and how they were handled (§4.3.1).
//!
//! Every number comes from a query the appendix names (`Q1`, `Q2`, ...)
//! with its SQL as run, values filled in, so that anyone can run it again
//! in clickhouse-client. The report's own queries are in
//! `deploy/clickhouse/report/`; the others are the analysts' pack.

mod html;

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use crate::clickhouse_args::ClickHouseArgs;
use crate::query::pack::{self, Lit, PackQuery};
use crate::query::Window;
use crate::registry::Conduit;

#[derive(Debug, clap::Subcommand)]
pub enum ReportCmd {
    /// The IACS UR E26 evidence of one vessel over a window: writes
    /// e26-VESSEL.html (one file, prints to PDF from a browser) and
    /// e26-VESSEL.json (the same data) into --out-dir.
    E26(E26Args),
}

#[derive(Debug, clap::Args)]
pub struct E26Args {
    /// The vessel (as in the fleet registry).
    #[arg(long)]
    pub vessel: String,
    #[command(flatten)]
    pub window: Window,
    /// Directory the report files are written to.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Bytes per hour above which a zone's traffic is reported as an
    /// exceedance.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub zone_hour_bytes: u64,
    /// Seconds without a sensor report counted as a silence.
    #[arg(long, default_value_t = 7200)]
    pub silence_s: u32,
    /// Days before --since that make the baseline of the inventory changes.
    #[arg(long, default_value_t = 14)]
    pub baseline_days: u32,
    /// Print the report's queries (values filled in, each after a
    /// `-- Qn: name` line) instead of running them.
    #[arg(long)]
    pub print_sql: bool,
}

/// A query of the report's own.
macro_rules! report_query {
    ($name:literal) => {
        PackQuery {
            name: $name,
            sql: include_str!(concat!("../../../deploy/clickhouse/report/", $name, ".sql")),
            subject: &[],
            at: None,
            fleet_wide: false,
        }
    };
}

const SENSORS: PackQuery = report_query!("e26-sensors");
const COVERAGE: PackQuery = report_query!("e26-coverage");
const INVENTORY: PackQuery = report_query!("e26-inventory");
const CROSSINGS: PackQuery = report_query!("e26-crossings");
const BANDWIDTH: PackQuery = report_query!("e26-bandwidth");
const ALARMS: PackQuery = report_query!("e26-alarms");

/// The sections, in the report's order: key, title, what it answers, the
/// query. Pack queries are named by their pack name.
const SECTIONS: &[(&str, &str, &str, Source)] = &[
    ("sensors", "Vessel and sensors", "The sensors the fleet registry lists for the vessel, their zones and the conduits allowed between them.", Source::Own(&SENSORS)),
    ("coverage", "Monitoring coverage", "Status reports of each sensor in the window, its silences and what it reported losing (capture drops, records dropped, batches set aside).", Source::Own(&COVERAGE)),
    ("inventory", "Inventory", "Every address observed, with what the device said of itself (E27 §3.1.1: manufacturer, model, firmware, serial); an empty field is unknown.", Source::Own(&INVENTORY)),
    ("inventory_changes", "Inventory changes", "Assets new in the window, addresses answering with another vendor, devices reporting another firmware.", Source::Pack("asset-changes")),
    ("crossings", "Zones and conduits", "Every observed connection between two zones, or between a zone and outside, judged against the conduits of the registry (E26 §4.2.1).", Source::Own(&CROSSINGS)),
    ("remote_access", "Remote access", "SSH, RDP, VNC and Telnet sessions into the OT and navigation zones from outside them (E26 §4.2.6).", Source::Pack("remote-access")),
    ("bandwidth", "Bandwidth per zone", "Bytes per zone and hour; hours over the threshold are exceedances.", Source::Own(&BANDWIDTH)),
    ("bridge_450", "IEC 61162-450 bridge network", "Findings on the navigation bridge network: TAG checksums, source identifiers, transmission groups, addresses, binary transfers.", Source::Pack("bridge-450")),
    ("alarms", "Alarms and their handling", "Alarms raised by the detection service for the vessel, and their state (E26 §4.3.1).", Source::Own(&ALARMS)),
];

#[derive(Clone, Copy)]
enum Source {
    Own(&'static PackQuery),
    Pack(&'static str),
}

impl Source {
    fn query(self) -> anyhow::Result<&'static PackQuery> {
        match self {
            Source::Own(q) => Ok(q),
            Source::Pack(name) => pack::find(name),
        }
    }
}

pub async fn run(ch: ClickHouseArgs, cmd: ReportCmd) -> anyhow::Result<()> {
    ch.validate()?;
    let ReportCmd::E26(args) = cmd;
    let report = e26(&ch, &args).await?;
    if args.print_sql {
        return Ok(());
    }
    let slug: String = args
        .vessel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let html_path = args.out_dir.join(format!("e26-{slug}.html"));
    let json_path = args.out_dir.join(format!("e26-{slug}.json"));
    std::fs::write(&html_path, html::page(&report))
        .with_context(|| format!("writing {}", html_path.display()))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!(
        "E26 report of {}: {} and {}",
        args.vessel,
        html_path.display(),
        json_path.display()
    );
    Ok(())
}

/// Runs every section's query and assembles the report (as JSON: what the
/// JSON file holds and what the HTML is drawn from).
pub async fn e26(ch: &ClickHouseArgs, args: &E26Args) -> anyhow::Result<Value> {
    let (since, until) = args.window.resolve()?;
    if args.vessel.is_empty() {
        bail!("--vessel must name a vessel");
    }
    let mut values = pack::values(&args.vessel, args.baseline_days, since, until)?;
    values.insert("silence_s", Lit::Int(args.silence_s as i64));
    values.insert("zone_hour_bytes", Lit::Int(args.zone_hour_bytes as i64));

    let mut sections = Map::new();
    let mut queries = Vec::new();
    for (i, (key, title, about, source)) in SECTIONS.iter().enumerate() {
        let q = source.query()?;
        let sql = pack::render(q, &values)?;
        if args.print_sql {
            println!("-- Q{}: {}\n{};\n", i + 1, q.name, sql.trim_end());
            continue;
        }
        let rows = pack::fetch(ch, &sql)
            .await
            .with_context(|| format!("report query {} ({}) failed", q.name, title))?;
        let id = format!("Q{}", i + 1);
        sections.insert(
            key.to_string(),
            json!({ "title": title, "about": about, "query": id, "rows": rows }),
        );
        queries.push(json!({ "id": id, "name": q.name, "sql": sql.trim() }));
    }
    if args.print_sql {
        return Ok(Value::Null);
    }
    judge_crossings(&mut sections);
    if sections["sensors"]["rows"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        bail!(
            "vessel {:?} has no active sensor in the fleet registry",
            args.vessel
        );
    }
    Ok(json!({
        "kind": "IACS UR E26 evidence",
        "vessel": args.vessel,
        "since": since,
        "until": until,
        "generated_at": time::OffsetDateTime::now_utc().unix_timestamp(),
        "zone_hour_bytes": args.zone_hour_bytes,
        "silence_s": args.silence_s,
        "sections": sections,
        "queries": queries,
    }))
}

/// Marks each zone crossing allowed or not by the conduits the sensors
/// rows list (JSON, as the registry stores them), naming the conduit.
fn judge_crossings(sections: &mut Map<String, Value>) {
    let conduits: Vec<Conduit> = sections["sensors"]["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["conduits"].as_str())
        .filter_map(|c| serde_json::from_str::<Vec<Conduit>>(c).ok())
        .flatten()
        .collect();
    let Some(rows) = sections["crossings"]["rows"].as_array_mut() else {
        return;
    };
    for r in rows.iter_mut().filter_map(Value::as_object_mut) {
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (from, to, protocol) = (
            text("client_zone"),
            text("server_zone"),
            text("app_protocol"),
        );
        let port = r.get("server_port").and_then(Value::as_u64).unwrap_or(0) as u16;
        let by = conduits
            .iter()
            .find(|c| c.allows(&from, &to, port, &protocol));
        r.insert("allowed".into(), Value::Bool(by.is_some()));
        r.insert(
            "conduit".into(),
            by.map_or(Value::Null, |c| {
                serde_json::to_value(c).unwrap_or(Value::Null)
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn every_query_renders_with_the_report_values() {
        let mut values: BTreeMap<&'static str, Lit> = BTreeMap::new();
        for k in [
            "since",
            "until",
            "baseline_since",
            "silence_s",
            "zone_hour_bytes",
        ] {
            values.insert(k, Lit::Int(1));
        }
        values.insert("vessel", Lit::Str("mv o'hara".into()));
        for (_, _, _, source) in SECTIONS {
            let sql = pack::render(source.query().unwrap(), &values).unwrap();
            assert!(sql.contains("'mv o\\'hara'"), "{sql}");
        }
    }

    #[test]
    fn crossings_are_judged_by_the_conduits() {
        let mut s = Map::new();
        s.insert(
            "sensors".into(),
            json!({"rows": [{"conduits": r#"[{"from":"crew","to":"outside","ports":[443]}]"#}]}),
        );
        s.insert(
            "crossings".into(),
            json!({"rows": [
                {"client_zone": "crew", "server_zone": "outside", "server_port": 443, "app_protocol": "tls"},
                {"client_zone": "crew", "server_zone": "ot", "server_port": 502, "app_protocol": "modbus"},
            ]}),
        );
        judge_crossings(&mut s);
        let rows = s["crossings"]["rows"].as_array().unwrap();
        assert_eq!(rows[0]["allowed"], true);
        assert_eq!(rows[0]["conduit"]["ports"], json!([443]));
        assert_eq!(rows[1]["allowed"], false);
        assert!(rows[1]["conduit"].is_null());
    }
}
