//! The fleet registry: which sensor is on which vessel or site, with the
//! vessel's IMO number and the sensor's role. The operator keeps it in a
//! JSON file (the Helm chart renders one from its values):
//!
//! ```json
//! {"sensors": [{"id": "crane-a", "vessel": "port-of-kiel", "site": "kiel", "role": "crane"},
//!              {"id": "bridge-b", "vessel": "mv-aurora", "imo": "9321483", "role": "bridge",
//!               "zones": {"ot": ["10.1.1.0/24"], "it": ["10.1.2.0/24"], "crew": ["10.1.3.0/24"]}}]}
//! ```
//!
//! `zones` names the network zones of the sensor's site (IPv4 CIDRs; zone
//! names are lowercase words such as ot, it, crew, nav, shore), used by the
//! segmentation query. `conduits` lists the traffic allowed across them
//! (IACS UR E26 4.2.1: only explicitly allowed traffic crosses a zone
//! boundary), from the client's zone to the server's, `outside` standing
//! for addresses in no zone; ports and protocols narrow a conduit (a flow
//! passes if it matches one of each listed):
//!
//! ```json
//! "conduits": [{"from": "it", "to": "outside", "ports": [443]},
//!              {"from": "it", "to": "ot", "protocols": ["modbus"]}]
//! ```
//!
//! The detector's zone-crossing rule raises an alert for any connection
//! between two different zones of a sensor with zones that no conduit
//! allows.
//!
//! `registry load FILE` validates the whole file first (nothing is written
//! if any entry is wrong) and then writes it to `fleet_registry_raw` under
//! one version; sensors no longer in the file are kept as inactive.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use clickhouse::Client;
use serde::{Deserialize, Serialize};

use crate::identity::validate_name;
use crate::query::{print_rows, OutputFormat};

pub const ROLES: &[&str] = &["bridge", "engine", "crane", "terminal", "cargo", "other"];

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: String,
    pub vessel: String,
    #[serde(default)]
    pub imo: String,
    #[serde(default)]
    pub site: String,
    #[serde(default = "other")]
    pub role: String,
    #[serde(default)]
    pub zones: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub conduits: Vec<Conduit>,
}

/// The zone of addresses in none of a site's zones.
pub const OUTSIDE: &str = "outside";

/// Traffic allowed from one zone to another (client's zone to server's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Conduit {
    pub from: String,
    pub to: String,
    /// Server ports allowed (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Application protocols allowed, as the sensor names them (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<String>,
}

impl Conduit {
    /// Whether it allows a flow from zone `from` to zone `to` on `port`
    /// speaking `protocol`.
    pub fn allows(&self, from: &str, to: &str, port: u16, protocol: &str) -> bool {
        self.from == from
            && self.to == to
            && (self.ports.is_empty() || self.ports.contains(&port))
            && (self.protocols.is_empty() || self.protocols.iter().any(|p| p == protocol))
    }
}

/// An IPv4 CIDR as (network, mask).
pub fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let net = u32::from(addr);
    (net & mask == net).then_some((net, mask))
}

impl Entry {
    /// (zone names, networks, masks), one element per CIDR.
    fn zone_arrays(&self) -> (Vec<String>, Vec<u32>, Vec<u32>) {
        let mut z = (Vec::new(), Vec::new(), Vec::new());
        for (name, cidrs) in &self.zones {
            for c in cidrs {
                if let Some((n, m)) = parse_cidr(c) {
                    z.0.push(name.clone());
                    z.1.push(n);
                    z.2.push(m);
                }
            }
        }
        z
    }
}

fn other() -> String {
    "other".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    sensors: Vec<Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("entry {index} (sensor {id:?}): {why}")]
    Entry {
        index: usize,
        id: String,
        why: String,
    },
    #[error("sensor {0:?} is listed twice")]
    Duplicate(String),
}

/// An IMO ship identification number: 7 digits, the last one a check digit
/// (the first six weighted 7..2, summed, modulo 10).
pub fn valid_imo(s: &str) -> bool {
    let d: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if d.len() != 7 || s.len() != 7 {
        return false;
    }
    let sum: u32 = d[..6].iter().zip((2..=7).rev()).map(|(x, w)| x * w).sum();
    sum % 10 == d[6]
}

/// Parses and validates a registry file's contents.
pub fn parse(text: &str) -> anyhow::Result<Vec<Entry>> {
    let f: File = serde_json::from_str(text)
        .context("not a fleet registry: expected {\"sensors\": [{\"id\", \"vessel\", ...}]}")?;
    validate(&f.sensors)?;
    Ok(f.sensors)
}

pub fn validate(entries: &[Entry]) -> Result<(), RegistryError> {
    let mut seen = BTreeSet::new();
    for (index, e) in entries.iter().enumerate() {
        let bad = |why: String| RegistryError::Entry {
            index,
            id: e.id.clone(),
            why,
        };
        validate_name("sensor id", &e.id).map_err(|x| bad(x.to_string()))?;
        if e.vessel.trim().is_empty() {
            return Err(bad("vessel is empty".into()));
        }
        if !e.imo.is_empty() && !valid_imo(&e.imo) {
            return Err(bad(format!(
                "IMO number {:?} is not 7 digits with a valid check digit",
                e.imo
            )));
        }
        if !ROLES.contains(&e.role.as_str()) {
            return Err(bad(format!(
                "role {:?} is not one of {}",
                e.role,
                ROLES.join(", ")
            )));
        }
        for (zone, cidrs) in &e.zones {
            if zone.is_empty() || !zone.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                return Err(bad(format!("zone name {zone:?}: use lowercase letters")));
            }
            if zone == OUTSIDE {
                return Err(bad(format!(
                    "zone name {OUTSIDE:?} is reserved for addresses in no zone"
                )));
            }
            for c in cidrs {
                if parse_cidr(c).is_none() {
                    return Err(bad(format!(
                        "zone {zone}: {c:?} is not an IPv4 network in CIDR form (e.g. 10.1.1.0/24)"
                    )));
                }
            }
        }
        for (i, c) in e.conduits.iter().enumerate() {
            for z in [&c.from, &c.to] {
                if z != OUTSIDE && !e.zones.contains_key(z) {
                    return Err(bad(format!(
                        "conduit {i}: zone {z:?} is neither one of the sensor's zones nor {OUTSIDE:?}"
                    )));
                }
            }
            if c.from == c.to {
                return Err(bad(format!(
                    "conduit {i}: from and to are both {:?} (traffic within a zone needs no conduit)",
                    c.from
                )));
            }
            if c.ports.contains(&0) {
                return Err(bad(format!("conduit {i}: port 0")));
            }
            if let Some(p) = c.protocols.iter().find(|p| {
                p.is_empty()
                    || !p.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "-_".contains(ch)
                    })
            }) {
                return Err(bad(format!(
                    "conduit {i}: protocol {p:?}: use the sensor's lowercase names (modbus, s7comm, tls, ...)"
                )));
            }
        }
        if !seen.insert(e.id.clone()) {
            return Err(RegistryError::Duplicate(e.id.clone()));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, clickhouse::Row)]
pub struct Row {
    pub sensor_id: String,
    pub vessel: String,
    pub imo: String,
    pub site: String,
    pub role: String,
    pub zone_names: Vec<String>,
    pub zone_nets: Vec<u32>,
    pub zone_masks: Vec<u32>,
    /// JSON array of [`Conduit`]s.
    pub conduits: String,
    pub active: u8,
    pub loaded_at: u32,
    pub version: u64,
}

/// What a load changed.
#[derive(Debug, Default, PartialEq)]
pub struct LoadReport {
    pub active: usize,
    pub deactivated: Vec<String>,
}

/// Writes `entries` as the current registry.
pub async fn load(ch: &Client, entries: &[Entry]) -> anyhow::Result<LoadReport> {
    let before: Vec<Row> = ch
        .query("SELECT ?fields FROM fleet_registry WHERE active = 1")
        .fetch_all()
        .await
        .context("reading the current registry (run `migrate` first)")?;
    let now_us = tidewatch_proto::util::now_us().max(0) as u64;
    let listed: BTreeSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let gone: Vec<Row> = before
        .into_iter()
        .filter(|r| !listed.contains(r.sensor_id.as_str()))
        .collect();
    let mut ins = ch.insert::<Row>("fleet_registry_raw").await?;
    for e in entries {
        let (zone_names, zone_nets, zone_masks) = e.zone_arrays();
        ins.write(&Row {
            sensor_id: e.id.clone(),
            vessel: e.vessel.clone(),
            imo: e.imo.clone(),
            site: e.site.clone(),
            role: e.role.clone(),
            zone_names,
            zone_nets,
            zone_masks,
            conduits: serde_json::to_string(&e.conduits)?,
            active: 1,
            loaded_at: (now_us / 1_000_000) as u32,
            version: now_us,
        })
        .await?;
    }
    for r in &gone {
        // Keep what is known about it; only mark it inactive.
        ins.write(&Row {
            active: 0,
            loaded_at: (now_us / 1_000_000) as u32,
            version: now_us,
            ..r.clone()
        })
        .await?;
    }
    ins.end().await.context("writing the registry")?;
    Ok(LoadReport {
        active: entries.len(),
        deactivated: gone.into_iter().map(|r| r.sensor_id).collect(),
    })
}

#[derive(Debug, clap::Subcommand)]
pub enum RegistryCmd {
    /// Validate a registry file and make it the current registry.
    Load {
        /// JSON file: {"sensors": [{"id", "vessel", "imo", "site", "role"}]}.
        file: std::path::PathBuf,
        /// Only validate the file.
        #[arg(long)]
        check: bool,
    },
    /// Print the current registry.
    Show {
        /// Include sensors that left the registry.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
}

pub async fn run(ch: &Client, cmd: RegistryCmd) -> anyhow::Result<()> {
    match cmd {
        RegistryCmd::Load { file, check } => {
            let entries = read(&file)?;
            if check {
                println!("{}: {} sensors, valid", file.display(), entries.len());
                return Ok(());
            }
            let r = load(ch, &entries).await?;
            println!(
                "fleet registry loaded from {}: {} active sensors{}",
                file.display(),
                r.active,
                if r.deactivated.is_empty() {
                    String::new()
                } else {
                    format!("; no longer listed: {}", r.deactivated.join(", "))
                }
            );
        }
        RegistryCmd::Show { all, format } => {
            let sql = if all {
                "SELECT ?fields FROM fleet_registry ORDER BY sensor_id"
            } else {
                "SELECT ?fields FROM fleet_registry WHERE active = 1 ORDER BY sensor_id"
            };
            let rows: Vec<Row> = ch.query(sql).fetch_all().await?;
            print_rows(&rows, format)?;
        }
    }
    Ok(())
}

fn read(file: &Path) -> anyhow::Result<Vec<Entry>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    parse(&text).with_context(|| format!("invalid registry {}", file.display()))
}

/// Loads `file` into the registry (used by `migrate --fleet-registry`).
pub async fn load_file(ch: &Client, file: &Path) -> anyhow::Result<LoadReport> {
    let entries = read(file)?;
    load(ch, &entries).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imo_check_digit() {
        assert!(valid_imo("9074729"));
        assert!(valid_imo("9321483"));
        assert!(!valid_imo("9321484"));
        assert!(!valid_imo("932148"));
        assert!(!valid_imo("IMO9321483"));
    }

    #[test]
    fn files_are_validated_whole() {
        let ok = parse(
            r#"{"sensors": [{"id": "crane-a", "vessel": "port-of-kiel", "site": "kiel", "role": "crane"},
                            {"id": "bridge-b", "vessel": "mv-aurora", "imo": "9321483", "role": "bridge"},
                            {"id": "x", "vessel": "v"}]}"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[2].role, "other");
        let err = |t: &str| format!("{:#}", parse(t).unwrap_err());
        assert!(
            err(r#"{"sensors": [{"id": "a", "vessel": "v", "role": "galley"}]}"#)
                .contains("role \"galley\"")
        );
        assert!(
            err(r#"{"sensors": [{"id": "a", "vessel": "v", "imo": "1234568"}]}"#)
                .contains("check digit")
        );
        assert!(
            err(r#"{"sensors": [{"id": "a", "vessel": "v"}, {"id": "a", "vessel": "w"}]}"#)
                .contains("listed twice")
        );
        assert!(err(r#"{"sensors": [{"id": "a b", "vessel": "v"}]}"#).contains("sensor id"));
        assert!(err(r#"{"sensors": [{"id": "a", "vessel": " "}]}"#).contains("vessel is empty"));
        assert!(
            err(r#"{"sensors": [{"id": "a", "vessel": "v", "colour": "red"}]}"#)
                .contains("unknown field")
        );
        assert!(err("sensors: []").contains("not a fleet registry"));

        let zoned = |conduits: &str| {
            format!(
                r#"{{"sensors": [{{"id": "a", "vessel": "v", "zones": {{"ot": ["10.1.1.0/24"], "it": ["10.1.2.0/24"]}},
                   "conduits": {conduits}}}]}}"#
            )
        };
        let ok = parse(&zoned(
            r#"[{"from": "it", "to": "outside", "ports": [443]}, {"from": "it", "to": "ot", "protocols": ["modbus"]}]"#,
        ))
        .unwrap();
        let c = &ok[0].conduits;
        assert!(c[0].allows("it", "outside", 443, "tls"));
        assert!(!c[0].allows("it", "outside", 80, "http"));
        assert!(
            !c[0].allows("outside", "it", 443, "tls"),
            "a conduit has a direction"
        );
        assert!(c[1].allows("it", "ot", 502, "modbus"));
        assert!(!c[1].allows("it", "ot", 102, "s7comm"));
        for (conduits, want) in [
            (
                r#"[{"from": "it", "to": "nav"}]"#,
                "zone \"nav\" is neither",
            ),
            (r#"[{"from": "it", "to": "it"}]"#, "both \"it\""),
            (r#"[{"from": "it", "to": "ot", "ports": [0]}]"#, "port 0"),
            (
                r#"[{"from": "it", "to": "ot", "protocols": ["Modbus"]}]"#,
                "lowercase",
            ),
            (
                r#"[{"from": "it", "to": "ot", "port": [502]}]"#,
                "unknown field",
            ),
        ] {
            let e = err(&zoned(conduits));
            assert!(e.contains(want), "{conduits}: {e}");
        }
        assert!(err(
            r#"{"sensors": [{"id": "a", "vessel": "v", "zones": {"outside": ["10.0.0.0/8"]}}]}"#
        )
        .contains("reserved"));
    }
}
