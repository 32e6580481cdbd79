//! What the detector knows from ClickHouse, reloaded together every
//! `--refresh-secs`: the threat-intel indicators, the engineering stations
//! the sensors reported, the zones and conduits of the fleet registry, and
//! the devices (MACs) each vessel has shown. A reload that fails keeps the
//! previous sets.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use clickhouse::Client;
use serde::Deserialize;
use tidewatch_proto::v1::FlowRecord;

use super::FlowKey;
use crate::registry::{Conduit, OUTSIDE};

/// Everything the streaming rules compare with.
#[derive(Default)]
pub struct Known {
    pub intel: IntelIndex,
    pub stations: Stations,
    pub sites: Sites,
    pub devices: Devices,
}

impl Known {
    pub async fn load(ch: &Client) -> Result<Known, clickhouse::error::Error> {
        let (intel, stations, sites, devices) = tokio::try_join!(
            IntelIndex::load(ch),
            Stations::load(ch),
            Sites::load(ch),
            Devices::load(ch)
        )?;
        Ok(Known {
            intel,
            stations,
            sites,
            devices,
        })
    }
}

/// One loaded indicator, as the detector matches it.
#[derive(Debug, Clone, Deserialize, clickhouse::Row)]
pub struct Indicator {
    pub source: String,
    pub kind: String,
    pub value: String,
    pub matches: String,
    pub description: String,
    pub valid_until: u32,
}

/// The indicators by what they match.
#[derive(Default)]
pub struct IntelIndex {
    by_match: HashMap<String, Vec<Indicator>>,
    /// The loads (versions) the indicators come from, with how many each.
    pub versions: std::collections::BTreeMap<u64, u32>,
}

#[derive(Deserialize, clickhouse::Row)]
struct IndicatorRow {
    source: String,
    kind: String,
    value: String,
    matches: String,
    description: String,
    valid_until: u32,
    version: u64,
}

impl IntelIndex {
    async fn load(ch: &Client) -> Result<Self, clickhouse::error::Error> {
        let rows: Vec<IndicatorRow> = ch
            .query("SELECT source, kind, value, matches, description, toUInt32(valid_until) AS valid_until, version FROM intel_indicators")
            .fetch_all()
            .await?;
        let mut idx = IntelIndex::default();
        for r in rows {
            *idx.versions.entry(r.version).or_default() += 1;
            idx.by_match
                .entry(r.matches.clone())
                .or_default()
                .push(Indicator {
                    source: r.source,
                    kind: r.kind,
                    value: r.value,
                    matches: r.matches,
                    description: r.description,
                    valid_until: r.valid_until,
                });
        }
        Ok(idx)
    }

    pub fn len(&self) -> usize {
        self.by_match.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_match.is_empty()
    }

    /// The indicators flow `f` (its addresses as text in `key`) contacted
    /// while they were valid, with what matched.
    pub fn contacts<'a>(&'a self, key: &FlowKey, f: &FlowRecord) -> Vec<(String, &'a Indicator)> {
        if self.by_match.is_empty() {
            return Vec::new();
        }
        let mut keys: Vec<String> = [&key.client_ip, &key.server_ip]
            .into_iter()
            .filter(|ip| !ip.is_empty())
            .cloned()
            .collect();
        keys.extend(f.indicators.iter().map(|n| n.to_ascii_lowercase()));
        let at_s = f.first_seen_us / 1_000_000;
        let mut out = Vec::new();
        for k in keys {
            for i in self.by_match.get(&k).into_iter().flatten() {
                if i.valid_until == 0 || at_s <= i.valid_until as i64 {
                    out.push((k.clone(), i));
                }
            }
        }
        out
    }
}

/// When each host was first reported as an engineering station, by
/// (vessel, address), microseconds.
#[derive(Default)]
pub struct Stations {
    first_seen: HashMap<(String, String), i64>,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct StationRow {
    vessel: String,
    ip: String,
    first_seen_us: i64,
}

impl Stations {
    async fn load(ch: &Client) -> Result<Self, clickhouse::error::Error> {
        let rows: Vec<StationRow> = ch
            .query(
                "SELECT vessel, ip, min(first_seen_us) AS first_seen_us FROM \
                 (SELECT vessel, arrayJoin(ips) AS ip, first_seen_us FROM assets \
                  WHERE has(roles, 'engineering_station')) GROUP BY vessel, ip",
            )
            .fetch_all()
            .await?;
        Ok(Stations {
            first_seen: rows
                .into_iter()
                .map(|r| ((r.vessel, r.ip), r.first_seen_us))
                .collect(),
        })
    }

    /// Whether `host` was a station of `vessel` at least `ahead_us` before `at_us`.
    pub fn known(&self, vessel: &str, host: &str, at_us: i64, ahead_us: i64) -> bool {
        self.first_seen
            .get(&(vessel.to_string(), host.to_string()))
            .is_some_and(|&t| t <= at_us - ahead_us)
    }
}

/// A sensor's site as the fleet registry describes it.
#[derive(Debug, Default)]
pub struct Site {
    /// (zone, network, mask), in the registry's order: the first match wins.
    zones: Vec<(String, u32, u32)>,
    pub conduits: Vec<Conduit>,
}

impl Site {
    /// The zone of an IPv4 address (`outside` when in none).
    pub fn zone_of(&self, ip: Ipv4Addr) -> &str {
        let a = u32::from(ip);
        self.zones
            .iter()
            .find(|(_, net, mask)| a & mask == *net)
            .map_or(OUTSIDE, |(z, _, _)| z.as_str())
    }

    /// Whether a conduit allows a flow between two zones.
    pub fn allows(&self, from: &str, to: &str, port: u16, protocol: &str) -> bool {
        self.conduits
            .iter()
            .any(|c| c.allows(from, to, port, protocol))
    }
}

/// The sites of the sensors with zones, by sensor id.
#[derive(Default)]
pub struct Sites {
    by_sensor: HashMap<String, Site>,
}

#[derive(Deserialize, clickhouse::Row)]
struct SiteRow {
    sensor_id: String,
    zone_names: Vec<String>,
    zone_nets: Vec<u32>,
    zone_masks: Vec<u32>,
    conduits: String,
}

impl Sites {
    async fn load(ch: &Client) -> Result<Self, clickhouse::error::Error> {
        let rows: Vec<SiteRow> = ch
            .query(
                "SELECT sensor_id, zone_names, zone_nets, zone_masks, conduits FROM fleet_registry \
                 WHERE active = 1 AND notEmpty(zone_names)",
            )
            .fetch_all()
            .await?;
        let mut by_sensor = HashMap::new();
        for r in rows {
            // Written by `registry load` from a validated file.
            let conduits = serde_json::from_str(&r.conduits).unwrap_or_default();
            let zones = r
                .zone_names
                .into_iter()
                .zip(r.zone_nets)
                .zip(r.zone_masks)
                .map(|((z, n), m)| (z, n, m))
                .collect();
            by_sensor.insert(r.sensor_id, Site { zones, conduits });
        }
        Ok(Sites { by_sensor })
    }

    pub fn of(&self, sensor_id: &str) -> Option<&Site> {
        self.by_sensor.get(sensor_id)
    }
}

/// When each vessel first reported assets, and each of its devices (MAC)
/// was first seen, microseconds; what the detector saw since the last
/// reload is merged in.
#[derive(Default)]
pub struct Devices {
    vessel_first: HashMap<String, i64>,
    mac_first: HashMap<(String, String), i64>,
}

#[derive(Deserialize, clickhouse::Row)]
struct DeviceRow {
    vessel: String,
    mac: String,
    first_seen_us: i64,
}

impl Devices {
    async fn load(ch: &Client) -> Result<Self, clickhouse::error::Error> {
        let rows: Vec<DeviceRow> = ch
            .query(
                "SELECT vessel, mac, min(first_seen_us) AS first_seen_us FROM assets \
                 GROUP BY vessel, mac",
            )
            .fetch_all()
            .await?;
        let mut d = Devices::default();
        for r in rows {
            let v = d.vessel_first.entry(r.vessel.clone()).or_insert(i64::MAX);
            *v = (*v).min(r.first_seen_us);
            if !r.mac.is_empty() {
                d.mac_first.insert((r.vessel, r.mac), r.first_seen_us);
            }
        }
        Ok(d)
    }

    /// Whether `at_us` is past `vessel`'s first `learning_us` of asset
    /// reports (known ones, or at `at_us` if none).
    pub fn past_learning(&self, vessel: &str, at_us: i64, learning_us: i64) -> bool {
        let first = self.vessel_first.get(vessel).copied().unwrap_or(at_us);
        at_us >= first.saturating_add(learning_us)
    }

    /// Records a sighting of `mac` on `vessel` at `at_us`; whether it is
    /// the device's first (no earlier sighting known) after the vessel's
    /// first `learning_us` of asset reports.
    pub fn first_sighting(
        &mut self,
        vessel: &str,
        mac: &str,
        at_us: i64,
        learning_us: i64,
    ) -> bool {
        let v = self
            .vessel_first
            .entry(vessel.to_string())
            .or_insert(i64::MAX);
        *v = (*v).min(at_us);
        let learnt = self.past_learning(vessel, at_us, learning_us);
        let m = self
            .mac_first
            .entry((vessel.to_string(), mac.to_string()))
            .or_insert(at_us);
        let first = at_us <= *m;
        *m = (*m).min(at_us);
        learnt && first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_new_once_past_the_vessels_learning_time_and_never_before() {
        let mut d = Devices::default();
        let h = 3_600_000_000;
        assert!(!d.first_sighting("v", "aa", 0, 24 * h), "learning");
        assert!(!d.first_sighting("v", "aa", 30 * h, 24 * h), "seen before");
        assert!(d.first_sighting("v", "bb", 30 * h, 24 * h));
        assert!(
            d.first_sighting("v", "bb", 30 * h, 24 * h),
            "the same first sighting again (the same alert id)"
        );
        assert!(!d.first_sighting("v", "bb", 31 * h, 24 * h));
        assert!(
            !d.first_sighting("w", "bb", 30 * h, 24 * h),
            "another vessel learns"
        );
    }

    #[test]
    fn an_address_takes_the_first_zone_that_holds_it() {
        let s = Site {
            zones: vec![
                ("ot".into(), 0x0a010100, 0xffffff00),
                ("it".into(), 0x0a000000, 0xff000000),
            ],
            conduits: Vec::new(),
        };
        assert_eq!(s.zone_of(Ipv4Addr::new(10, 1, 1, 9)), "ot");
        assert_eq!(s.zone_of(Ipv4Addr::new(10, 2, 1, 9)), "it");
        assert_eq!(s.zone_of(Ipv4Addr::new(192, 0, 2, 1)), OUTSIDE);
    }
}
