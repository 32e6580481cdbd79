//! A synthetic fleet for the analysts' query pack: `vessels` vessels ×
//! `days` days of plausible baseline traffic, with anomalies of every kind
//! the queries look for planted on the last day, known by construction
//! ([`Truth`]). Deterministic for a given [`Spec`].
//!
//! Network plan of vessel `v` (sensor `sensor-VV` on vessel `mv-VV`):
//! - OT `10.v.1.0/24`: PLCs .10-.13 (Modbus/TCP 502), crane PLC .14 (S7 102),
//!   HMI .20 (polls the PLCs), engineering station .30 (writes to them);
//! - navigation `10.v.4.0/24`: GPS .10 broadcasting NMEA 0183 on UDP 10110;
//! - IT `10.v.2.0/24`: hosts .10-.19 (software updates ashore), DNS .1;
//! - crew `10.v.3.0/24`: hosts .10-.59 (internet through a pool of sites);
//! - ashore: update servers 203.0.113.10-12, crew sites 198.51.100.1-200.

use std::net::Ipv4Addr;

use serde::Serialize;
use tidewatch_proto::v1::{
    AssetObservation, Batch, DirectionCounters, FlowRecord, Operation, OperationClass, SensorStatus,
};

/// Size and shape of the fleet.
#[derive(Debug, Clone)]
pub struct Spec {
    pub vessels: usize,
    pub days: u32,
    /// Unix seconds of the first day's midnight (UTC).
    pub start_s: i64,
    /// Multiplies the crew and DNS traffic (the bulk): 1 gives about 230
    /// flows per vessel-hour.
    pub scale: u32,
    pub seed: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            vessels: 4,
            days: 3,
            start_s: 1_767_225_600, // 2026-01-01
            scale: 1,
            seed: 7,
        }
    }
}

/// What was planted, by query.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Truth {
    /// First hour of the detection window (the last day), Unix seconds.
    pub window_start_s: i64,
    /// (vessel, external destination ip) first contacted in the window.
    pub new_destinations: Vec<(String, String)>,
    /// (vessel, client ip, destination ip, hour start) with outbound bytes
    /// far above the destination's baseline.
    pub volume_spikes: Vec<(String, String, String, i64)>,
    /// (vessel, client ip, destination ip:port) contacted at a fixed period.
    pub beacons: Vec<(String, String, String)>,
    /// (vessel, client ip, PLC ip) OT writes from a host that is not an
    /// engineering station.
    pub unexpected_ot_writes: Vec<(String, String, String)>,
    /// (vessel, client ip, server ip:port or network) connections into the
    /// OT zone from outside it (ashore or another zone).
    pub segmentation_breaks: Vec<(String, String, String)>,
    /// (vessel, scanner ip).
    pub scans: Vec<(String, String)>,
    /// (vessel, ip) of assets first seen in the window.
    pub new_assets: Vec<(String, String)>,
    /// (vessel, ip, old vendor, new vendor).
    pub changed_vendors: Vec<(String, String, String, String)>,
    /// (destination ip, vessels) first contacted by several vessels within
    /// two hours.
    pub campaigns: Vec<(String, Vec<String>)>,
    /// (sensor id, problem): "silent", "backlog", "drops", "budget".
    pub sensor_health: Vec<(String, String)>,
}

/// One sensor's share of the fleet.
#[derive(Debug, Clone)]
pub struct SensorPlan {
    pub sensor_id: String,
    pub vessel: String,
    pub index: usize,
}

pub struct Fleet {
    pub spec: Spec,
    pub sensors: Vec<SensorPlan>,
    pub truth: Truth,
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> Vec<u8> {
    vec![a, b, c, d]
}

fn text(b: &[u8]) -> String {
    Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
}

/// xorshift, seeded per (sensor, hour) so that generation can stream.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[allow(clippy::too_many_arguments)]
fn flow(
    t_us: i64,
    dur_us: i64,
    client: Vec<u8>,
    server: Vec<u8>,
    cport: u32,
    sport: u32,
    proto: u32,
    c2s: (u64, u64),
    s2c: (u64, u64),
    app: &str,
    ops: Vec<Operation>,
) -> FlowRecord {
    let dir = |(packets, bytes): (u64, u64)| {
        Some(DirectionCounters {
            packets,
            ip_bytes: bytes,
            payload_bytes: bytes.saturating_sub(packets * 40),
            tcp_flags: if proto == 6 { 0x1b } else { 0 },
        })
    };
    FlowRecord {
        first_seen_us: t_us,
        last_seen_us: t_us + dur_us,
        client_ip: client,
        server_ip: server,
        client_port: cport,
        server_port: sport,
        ip_protocol: proto,
        c2s: dir(c2s),
        s2c: dir(s2c),
        app_protocol: app.into(),
        vlan: 0,
        end: if proto == 6 { 3 } else { 1 },
        operations: ops,
        indicators: Vec::new(),
    }
}

fn op(code: u32, name: &str, class: OperationClass, count: u64) -> Operation {
    Operation {
        code,
        name: name.into(),
        class: class as i32,
        count,
        errors: 0,
    }
}

fn asset(
    mac: [u8; 6],
    ipv: Vec<u8>,
    vendor: &str,
    t_us: i64,
    protos: &[&str],
    roles: &[&str],
) -> AssetObservation {
    AssetObservation {
        mac: mac.to_vec(),
        ips: vec![ipv],
        vendor: vendor.into(),
        first_seen_us: t_us,
        last_seen_us: t_us,
        protocols: protos.iter().map(|s| s.to_string()).collect(),
        roles: roles.iter().map(|s| s.to_string()).collect(),
    }
}

const CAMPAIGN: [u8; 4] = [45, 33, 32, 156];
const NEW_DEST: [u8; 4] = [192, 0, 2, 66];
const BEACON: [u8; 4] = [198, 18, 0, 77];
const SHORE_INTRUDER: [u8; 4] = [203, 0, 113, 200];

impl Fleet {
    pub fn new(spec: Spec) -> Fleet {
        assert!(spec.vessels >= 4, "the anomalies need at least 4 vessels");
        assert!(
            spec.days >= 2,
            "a baseline day and a detection day at least"
        );
        let sensors: Vec<SensorPlan> = (0..spec.vessels)
            .map(|i| SensorPlan {
                sensor_id: format!("sensor-{i:02}"),
                vessel: format!("mv-{i:02}"),
                index: i,
            })
            .collect();
        let window = spec.start_s + (spec.days as i64 - 1) * 86_400;
        let v = |i: usize| sensors[i].vessel.clone();
        let o = |i: usize| i as u8;
        let mut t = Truth {
            window_start_s: window,
            ..Truth::default()
        };
        t.new_destinations.push((v(0), text(&NEW_DEST)));
        t.new_destinations.push((v(2), text(&BEACON)));
        for i in 0..spec.vessels {
            t.new_destinations.push((v(i), text(&CAMPAIGN)));
        }
        t.volume_spikes.push((
            v(1),
            text(&ip(10, o(1), 2, 11)),
            // IT host .11 updates from server 10 + 11 % 3.
            text(&ip(203, 0, 113, 12)),
            window + 7 * 3600,
        ));
        t.beacons.push((
            v(2),
            text(&ip(10, o(2), 2, 12)),
            format!("{}:8443", text(&BEACON)),
        ));
        t.unexpected_ot_writes
            .push((v(1), text(&ip(10, o(1), 3, 44)), text(&ip(10, o(1), 1, 11))));
        t.segmentation_breaks.push((
            v(1),
            text(&ip(10, o(1), 3, 44)),
            format!("{}:502", text(&ip(10, o(1), 1, 11))),
        ));
        t.segmentation_breaks.push((
            v(2),
            text(&SHORE_INTRUDER),
            format!("{}:502", text(&ip(10, o(2), 1, 10))),
        ));
        t.segmentation_breaks.push((
            v(0),
            text(&ip(10, o(0), 3, 20)),
            format!("{}:102", text(&ip(10, o(0), 1, 14))),
        ));
        t.scans.push((v(1), text(&ip(10, o(1), 2, 99))));
        // The scan reaches into OT from the IT zone: a segmentation break too.
        t.segmentation_breaks.push((
            v(1),
            text(&ip(10, o(1), 2, 99)),
            format!("{}/24", text(&ip(10, o(1), 1, 0))),
        ));
        t.new_assets.push((v(0), text(&ip(10, o(0), 1, 50))));
        t.new_assets.push((v(1), text(&ip(10, o(1), 3, 44))));
        t.changed_vendors.push((
            v(2),
            text(&ip(10, o(2), 1, 12)),
            "Siemens AG".into(),
            "Espressif Inc.".into(),
        ));
        t.campaigns
            .push((text(&CAMPAIGN), (0..spec.vessels).map(v).collect()));
        let last = spec.vessels - 1;
        t.sensor_health
            .push((sensors[last].sensor_id.clone(), "silent".into()));
        t.sensor_health
            .push((sensors[1].sensor_id.clone(), "backlog".into()));
        t.sensor_health
            .push((sensors[2].sensor_id.clone(), "drops".into()));
        t.sensor_health
            .push((sensors[0].sensor_id.clone(), "budget".into()));
        Fleet {
            spec,
            sensors,
            truth: t,
        }
    }

    /// Number of hours of data.
    pub fn hours(&self) -> u32 {
        self.spec.days * 24
    }

    /// The batch of one sensor for one hour (flows, assets, a status).
    /// `None` when the sensor sent nothing that hour (the silent sensor).
    pub fn hour(&self, s: &SensorPlan, h: u32) -> Option<Batch> {
        let spec = &self.spec;
        let hour_s = spec.start_s + h as i64 * 3600;
        let window = self.truth.window_start_s;
        let last_day = hour_s >= window;
        let silent = s.index == spec.vessels - 1 && hour_s >= window + 12 * 3600;
        if silent {
            return None;
        }
        let vb = s.index as u8;
        let mut rng = Rng::new(spec.seed ^ ((s.index as u64) << 32) ^ h as u64);
        let us = |sec: i64| (hour_s + sec) * 1_000_000;
        let mut flows = Vec::new();
        let mut assets = Vec::new();
        let eng = ip(10, vb, 1, 30);
        let hmi = ip(10, vb, 1, 20);

        // OT: the HMI polls every PLC every 10 minutes; the crane PLC too.
        for m in 0..6i64 {
            for p in 10..=13u8 {
                let t = us(m * 600 + p as i64);
                flows.push(flow(
                    t,
                    200_000,
                    hmi.clone(),
                    ip(10, vb, 1, p),
                    40_000 + rng.below(20_000) as u32,
                    502,
                    6,
                    (6, 420),
                    (6, 460),
                    "modbus",
                    vec![op(3, "read_holding_registers", OperationClass::Read, 4)],
                ));
            }
            flows.push(flow(
                us(m * 600 + 30),
                300_000,
                hmi.clone(),
                ip(10, vb, 1, 14),
                40_000 + rng.below(20_000) as u32,
                102,
                6,
                (8, 600),
                (8, 700),
                "s7comm",
                vec![op(4, "read_var", OperationClass::Read, 2)],
            ));
        }
        // The engineering station writes a setpoint once a day at 10:00.
        if h % 24 == 10 {
            flows.push(flow(
                us(5),
                400_000,
                eng.clone(),
                ip(10, vb, 1, 10 + (h / 24 % 4) as u8),
                50_000 + rng.below(10_000) as u32,
                502,
                6,
                (4, 300),
                (4, 280),
                "modbus",
                vec![op(6, "write_single_register", OperationClass::Write, 2)],
            ));
        }
        // Navigation: the GPS broadcasts NMEA (two records an hour).
        for half in 0..2i64 {
            flows.push(flow(
                us(half * 1800),
                1_799_000_000,
                ip(10, vb, 4, 10),
                ip(10, vb, 4, 255),
                10110,
                10110,
                17,
                (1800, 1800 * 110),
                (0, 0),
                "nmea0183",
                vec![op(68023768, "GPGGA", OperationClass::Other, 1800)],
            ));
        }
        // IT: update checks ashore, two an hour per host.
        for host in 10..=19u8 {
            for k in 0..2 {
                let server = ip(203, 0, 113, 10 + (host % 3));
                let spike =
                    last_day && hour_s == window + 7 * 3600 && s.index == 1 && host == 11 && k == 0;
                let up = if spike {
                    (350_000, 500_000_000)
                } else {
                    (12 + rng.below(6), 1_500 + rng.below(800))
                };
                flows.push(flow(
                    us(k * 1800 + host as i64 * 7 + rng.below(60) as i64),
                    2_000_000,
                    ip(10, vb, 2, host),
                    server,
                    30_000 + rng.below(30_000) as u32,
                    443,
                    6,
                    up,
                    (30 + rng.below(20), 40_000 + rng.below(20_000)),
                    "tls",
                    Vec::new(),
                ));
            }
        }
        // Crew internet and DNS: the bulk.
        for _ in 0..100 * spec.scale {
            let host = 10 + rng.below(50) as u8;
            let site = 1 + rng.below(200) as u8;
            flows.push(flow(
                us(rng.below(3600) as i64),
                5_000_000 + rng.below(60_000_000) as i64,
                ip(10, vb, 3, host),
                ip(198, 51, 100, site),
                30_000 + rng.below(30_000) as u32,
                if rng.below(5) == 0 { 80 } else { 443 },
                6,
                (10 + rng.below(40), 2_000 + rng.below(20_000)),
                (20 + rng.below(200), 20_000 + rng.below(2_000_000)),
                "tls",
                Vec::new(),
            ));
        }
        for _ in 0..100 * spec.scale {
            let zone = if rng.below(2) == 0 { 2 } else { 3 };
            flows.push(flow(
                us(rng.below(3600) as i64),
                20_000,
                ip(10, vb, zone, 10 + rng.below(50) as u8),
                ip(10, vb, 2, 1),
                30_000 + rng.below(30_000) as u32,
                53,
                17,
                (1, 70),
                (1, 120),
                "dns",
                Vec::new(),
            ));
        }
        if h == 0 {
            for p in 10..=14u8 {
                let (mac, vendor) = if p == 12 || p == 14 {
                    ([0x00, 0x1b, 0x1b, 0, vb, p], "Siemens AG")
                } else {
                    ([0x00, 0x80, 0xf4, 0, vb, p], "Schneider Electric")
                };
                let proto = if p == 14 { "s7comm" } else { "modbus" };
                assets.push(asset(
                    mac,
                    ip(10, vb, 1, p),
                    vendor,
                    us(0),
                    &[proto],
                    &["controller"],
                ));
            }
            assets.push(asset(
                [0x00, 0x0c, 0x29, 0, vb, 20],
                hmi.clone(),
                "VMware, Inc.",
                us(0),
                &["modbus"],
                &[],
            ));
            assets.push(asset(
                [0x00, 0x0c, 0x29, 0, vb, 30],
                eng.clone(),
                "VMware, Inc.",
                us(0),
                &["modbus"],
                &["engineering_station"],
            ));
            assets.push(asset(
                [0x00, 0xa0, 0xc8, 0, vb, 10],
                ip(10, vb, 4, 10),
                "Garmin International",
                us(0),
                &["nmea0183"],
                &["navigation_device"],
            ));
        }

        if last_day {
            let hw = ((hour_s - window) / 3600) as u32;
            self.plant(s, hw, &us, &mut flows, &mut assets);
        }
        let status = self.status(s, hour_s, last_day);
        Some(Batch {
            seq: h as u64 + 1,
            sensor_id: String::new(),
            created_us: (hour_s + 3599) * 1_000_000,
            flows,
            assets,
            status: vec![status],
        })
    }

    /// The anomalies of the detection window, at hour `hw` of it.
    fn plant(
        &self,
        s: &SensorPlan,
        hw: u32,
        us: &dyn Fn(i64) -> i64,
        flows: &mut Vec<FlowRecord>,
        assets: &mut Vec<AssetObservation>,
    ) {
        let vb = s.index as u8;
        let tls = |t, client: Vec<u8>, server: [u8; 4], port| {
            flow(
                t,
                3_000_000,
                client,
                server.to_vec(),
                45_000,
                port,
                6,
                (12, 2_400),
                (14, 9_000),
                "tls",
                Vec::new(),
            )
        };
        // New external destination (vessel 0, hour 5).
        if s.index == 0 && hw == 5 {
            flows.push(tls(us(600), ip(10, vb, 3, 33), NEW_DEST, 443));
        }
        // Fleet-wide campaign: every vessel, between hours 8 and 10 (before
        // the silent sensor goes quiet).
        if hw == 8 + (s.index as u32 % 2) {
            flows.push(tls(
                us(300 + (97 * s.index as i64) % 3000),
                ip(10, vb, 2, 14),
                CAMPAIGN,
                443,
            ));
        }
        // Beaconing (vessel 2): every 60 s ± 1 s for six hours, small and constant.
        if s.index == 2 && (2..8).contains(&hw) {
            for k in 0..60i64 {
                let jitter = (k * 7 % 3) - 1;
                flows.push(flow(
                    us(k * 60 + jitter),
                    150_000,
                    ip(10, vb, 2, 12),
                    BEACON.to_vec(),
                    52_000 + k as u32,
                    8443,
                    6,
                    (5, 620),
                    (4, 560),
                    "tls",
                    Vec::new(),
                ));
            }
        }
        // An OT write from a crew laptop (vessel 1, hour 9): unexpected
        // writer and a crew -> OT segmentation break. Like a real sensor,
        // this one reports the laptop as an asset in the engineering-station
        // role as soon as it writes (so it is a new asset too).
        if s.index == 1 && hw == 9 {
            assets.push(asset(
                [0x18, 0x66, 0xda, 0, vb, 44],
                ip(10, vb, 3, 44),
                "Dell Inc.",
                us(1200),
                &["modbus"],
                &["engineering_station"],
            ));
            flows.push(flow(
                us(1200),
                300_000,
                ip(10, vb, 3, 44),
                ip(10, vb, 1, 11),
                51_515,
                502,
                6,
                (4, 300),
                (4, 280),
                "modbus",
                vec![op(6, "write_single_register", OperationClass::Write, 2)],
            ));
        }
        // Inbound into OT from ashore (vessel 2, hour 11).
        if s.index == 2 && hw == 11 {
            flows.push(flow(
                us(100),
                900_000,
                SHORE_INTRUDER.to_vec(),
                ip(10, vb, 1, 10),
                61_000,
                502,
                6,
                (6, 420),
                (6, 460),
                "modbus",
                vec![op(3, "read_holding_registers", OperationClass::Read, 4)],
            ));
        }
        // Crew host talking to the crane PLC (vessel 0, hour 12).
        if s.index == 0 && hw == 12 {
            flows.push(flow(
                us(60),
                500_000,
                ip(10, vb, 3, 20),
                ip(10, vb, 1, 14),
                49_152,
                102,
                6,
                (8, 600),
                (8, 700),
                "s7comm",
                vec![op(4, "read_var", OperationClass::Read, 2)],
            ));
        }
        // A scan (vessel 1, hour 3): every OT address on 502, then the
        // first 100 ports of one PLC; one SYN each, answered by RST or nothing.
        if s.index == 1 && hw == 3 {
            let scanner = ip(10, vb, 2, 99);
            for (i, (host, port)) in (1..=254u8)
                .map(|h| (h, 502u32))
                .chain((1..=100u32).map(|p| (10u8, p)))
                .enumerate()
            {
                flows.push(flow(
                    us(i as i64 / 10),
                    1_000,
                    scanner.clone(),
                    ip(10, vb, 1, host),
                    40_001,
                    port,
                    6,
                    (1, 44),
                    (u64::from(host % 3 == 0), 40 * u64::from(host % 3 == 0)),
                    "",
                    Vec::new(),
                ));
            }
        }
        // A new asset (vessel 0) and a changed vendor (vessel 2), hour 6.
        if hw == 6 {
            if s.index == 0 {
                assets.push(asset(
                    [0x02, 0x42, 0xac, 0, vb, 50],
                    ip(10, vb, 1, 50),
                    "Unknown Vendor Ltd",
                    us(30),
                    &[],
                    &[],
                ));
            }
            if s.index == 2 {
                assets.push(asset(
                    [0x24, 0x0a, 0xc4, 0, vb, 12],
                    ip(10, vb, 1, 12),
                    "Espressif Inc.",
                    us(30),
                    &["modbus"],
                    &["controller"],
                ));
            }
        }
    }

    /// The hour's status record, with the planted health problems.
    fn status(&self, s: &SensorPlan, hour_s: i64, last_day: bool) -> SensorStatus {
        let hw = (hour_s - self.truth.window_start_s) / 3600;
        let mut st = SensorStatus {
            observed_us: (hour_s + 3599) * 1_000_000,
            capture_packets: 100_000,
            software_version: "fleetgen".into(),
            daily_byte_budget: 50_000_000,
            bytes_sent_today: 400_000 * ((hour_s % 86_400) / 3600 + 1) as u64,
            ..SensorStatus::default()
        };
        if last_day {
            match s.index {
                1 => {
                    st.buffer_backlog_records = 2_000 * (hw as u64 + 1);
                    st.buffer_backlog_bytes = 150_000 * (hw as u64 + 1);
                }
                2 if hw >= 6 => st.records_dropped = 5_000,
                0 if hw >= 18 => st.bytes_sent_today = st.daily_byte_budget,
                _ => {}
            }
        }
        st
    }

    /// Every batch of every sensor, sensor by sensor (streams: memory stays
    /// at one batch).
    pub fn batches<'a>(&'a self, s: &'a SensorPlan) -> impl Iterator<Item = Batch> + 'a {
        (0..self.hours()).filter_map(move |h| self.hour(s, h))
    }

    /// The fleet registry file (`tidewatch-collector registry load`).
    pub fn registry_json(&self) -> String {
        let sensors: Vec<serde_json::Value> = self
            .sensors
            .iter()
            .map(|s| {
                let v = s.index;
                serde_json::json!({
                    "id": s.sensor_id, "vessel": s.vessel,
                    "role": if v % 2 == 0 { "bridge" } else { "engine" },
                    "zones": {
                        "ot": [format!("10.{v}.1.0/24")],
                        "it": [format!("10.{v}.2.0/24")],
                        "crew": [format!("10.{v}.3.0/24")],
                        "nav": [format!("10.{v}.4.0/24")],
                    },
                })
            })
            .collect();
        serde_json::json!({ "sensors": sensors }).to_string()
    }
}

/// Uploads the whole fleet through ingest (one mTLS stream per sensor, with
/// its own certificate) and loads its registry; returns the flow totals per
/// sensor, as `expect_flows` takes them.
pub fn load(
    stack: &crate::Stack,
    pki: &crate::Pki,
    port: u16,
    fleet: &Fleet,
) -> std::collections::BTreeMap<String, crate::Totals> {
    use tidewatch_proto::v1::AckStatus;
    let mut want = std::collections::BTreeMap::new();
    for s in &fleet.sensors {
        let cert = pki.sensor(&s.sensor_id, &s.vessel);
        let e: &mut crate::Totals = want.entry(s.sensor_id.clone()).or_default();
        let mut reqs = Vec::new();
        for b in fleet.batches(s) {
            for f in &b.flows {
                e.flows += 1;
                let (c, d) = (f.c2s.unwrap_or_default(), f.s2c.unwrap_or_default());
                e.packets += c.packets + d.packets;
                e.bytes += c.ip_bytes + d.ip_bytes;
            }
            reqs.push(tidewatch_proto::codec::encode(&b, Some(3)));
        }
        for chunk in reqs.chunks(200) {
            let acks = crate::grpc::upload(
                port,
                &cert.ca,
                Some(crate::grpc::ClientCert {
                    cert: &cert.cert,
                    key: &cert.key,
                }),
                chunk.to_vec(),
            )
            .unwrap_or_else(|e| panic!("upload of {}: {e}", s.sensor_id));
            assert_eq!(acks.len(), chunk.len());
            assert!(
                acks.iter().all(|a| a.status == AckStatus::Accepted as i32),
                "a batch of {} was refused: {acks:?}",
                s.sensor_id
            );
        }
    }
    let registry = stack.path().join("fleet-registry.json");
    std::fs::write(&registry, fleet.registry_json()).expect("registry file");
    crate::run_ok(stack.collector().args(["registry", "load"]).arg(&registry));
    want
}

/// A fresh stack (schema, PKI, ingest, sink) with the fleet loaded through
/// it and every flow in ClickHouse.
pub struct Loaded {
    // Fields drop in order: the processes stop before the stack.
    _ingest: crate::Proc,
    _sink: crate::Proc,
    pub fleet: Fleet,
    /// Flow totals per sensor, as sent.
    pub want: std::collections::BTreeMap<String, crate::Totals>,
    pub stack: crate::Stack,
}

impl Loaded {
    pub fn start(spec: Spec) -> Loaded {
        let stack = crate::Stack::start();
        stack.migrate();
        let pki = crate::Pki::new(stack.path().join("pki"));
        let port = crate::free_port();
        let ingest = stack.ingest(&pki, port, &[]);
        let sink = stack.sink("sink", &[]);
        let fleet = Fleet::new(spec);
        let want = load(&stack, &pki, port, &fleet);
        crate::expect_flows(&stack, &want);
        Loaded {
            _ingest: ingest,
            _sink: sink,
            fleet,
            want,
            stack,
        }
    }
}
