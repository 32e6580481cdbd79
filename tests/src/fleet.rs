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
use tidewatch_sensor::protocols::nmea;

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
    /// (vessel, finding, client ip, server ip) of the IEC 61162-450 bridge
    /// network (`bridge-450`).
    pub bridge_450: Vec<(String, String, String, String)>,
    /// (vessel, client ip, server ip, protocol) remote-access sessions into
    /// the OT or navigation zone from outside it.
    pub remote_access: Vec<(String, String, String, String)>,
    /// (vessel, ip) of assets first seen in the window.
    pub new_assets: Vec<(String, String)>,
    /// (vessel, ip, old vendor, new vendor).
    pub changed_vendors: Vec<(String, String, String, String)>,
    /// (vessel, ip, old firmware, new firmware).
    pub changed_firmware: Vec<(String, String, String, String)>,
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

/// One flow record by named fields: times in microseconds, each direction
/// as (packets, IP bytes).
struct Flow<'a> {
    t_us: i64,
    dur_us: i64,
    client: Vec<u8>,
    server: Vec<u8>,
    cport: u32,
    sport: u32,
    proto: u32,
    c2s: (u64, u64),
    s2c: (u64, u64),
    app: &'a str,
    ops: Vec<Operation>,
}

impl Flow<'_> {
    fn record(self) -> FlowRecord {
        let proto = self.proto;
        let dir = |(packets, bytes): (u64, u64)| {
            Some(DirectionCounters {
                packets,
                ip_bytes: bytes,
                payload_bytes: bytes.saturating_sub(packets * 40),
                tcp_flags: if proto == 6 { 0x1b } else { 0 },
            })
        };
        FlowRecord {
            first_seen_us: self.t_us,
            last_seen_us: self.t_us + self.dur_us,
            client_ip: self.client,
            server_ip: self.server,
            client_port: self.cport,
            server_port: self.sport,
            ip_protocol: proto,
            c2s: dir(self.c2s),
            s2c: dir(self.s2c),
            app_protocol: self.app.into(),
            vlan: 0,
            end: if proto == 6 { 3 } else { 1 },
            operations: self.ops,
            indicators: Vec::new(),
        }
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
        ..AssetObservation::default()
    }
}

/// The identity a PLC gives of itself (as a sensor reads it from its
/// device identification replies): vendor, product, firmware, protocol.
fn identified(
    mut a: AssetObservation,
    (vendor, product, firmware, protocol): (&str, &str, &str, &str),
) -> AssetObservation {
    a.device_vendor = vendor.into();
    a.product = product.into();
    a.firmware = firmware.into();
    a.serial = format!("SN-{}", tidewatch_proto::util::mac_text(&a.mac));
    a.identity_protocol = protocol.into();
    a
}

/// What the fleet's PLCs say they are: the Siemens CPUs (S7 SZL) and the
/// Schneider ones (Modbus 43/14).
const SIEMENS_CPU: (&str, &str, &str, &str) =
    ("Siemens", "6ES7 315-2EH14-0AB0", "V3.2.7", "s7comm");
const SCHNEIDER_PLC: (&str, &str, &str, &str) =
    ("Schneider Electric", "BMX P34 2020", "v2.8", "modbus");

/// Where in the detection window a planted anomaly may happen.
#[derive(Clone, Copy)]
struct At {
    vessel: usize,
    vessels: usize,
    /// Hour of the detection window (the last day).
    hw: u32,
}

/// Where its records go: vessel `vb`'s addresses, `us(s)` the time `s`
/// seconds into the hour; `start_us` the fleet's first hour.
struct Site<'a> {
    vb: u8,
    us: &'a dyn Fn(i64) -> i64,
    start_us: i64,
}

/// One anomaly planted in the detection window, declared once: when it
/// happens, the records (or status, or silence) that plant it, and what the
/// queries must find ([`Truth`]).
struct Anomaly {
    when: fn(At) -> bool,
    plant: fn(&Site<'_>, &mut Vec<FlowRecord>, &mut Vec<AssetObservation>),
    status: fn(&mut SensorStatus, At),
    /// The sensor sends nothing at all while `when` holds.
    silences: bool,
    truth: fn(&mut Truth, &[SensorPlan]),
}

impl Anomaly {
    /// Nothing planted, nothing expected: the base the table's entries
    /// fill in.
    const NOTHING: Anomaly = Anomaly {
        when: |_| false,
        plant: |_, _, _| {},
        status: |_, _| {},
        silences: false,
        truth: |_, _| {},
    };
}

const CAMPAIGN: [u8; 4] = [45, 33, 32, 156];
const NEW_DEST: [u8; 4] = [192, 0, 2, 66];
const BEACON: [u8; 4] = [198, 18, 0, 77];
const SHORE_INTRUDER: [u8; 4] = [203, 0, 113, 200];
const SHORE_VENDOR: [u8; 4] = [198, 51, 100, 20];
/// IEC 61162-450 transmission groups: TGTD, NAVD, VDRD, USR1.
const TGTD: [u8; 4] = [239, 192, 0, 2];
const NAVD: [u8; 4] = [239, 192, 0, 4];
const VDRD: [u8; 4] = [239, 192, 0, 5];
const USR1: [u8; 4] = [239, 192, 0, 9];

/// An hour of a 61162-450 talker: `n` datagrams of `sentence` from
/// `client` (SFI `sfi`) to the transmission group `group`, `bad_tags` of
/// them with a bad TAG block checksum.
fn talker_450(
    t: i64,
    client: Vec<u8>,
    group: [u8; 4],
    sfi: &str,
    sentence: &str,
    n: u64,
    bad_tags: u64,
) -> FlowRecord {
    let port = 60_000 + group[3] as u32;
    let mut tag = op(
        nmea::TAG_BLOCK,
        "tag_block",
        OperationClass::Other,
        n - bad_tags,
    );
    tag.errors = bad_tags;
    Flow {
        t_us: t,
        dur_us: 3_599_000_000,
        client,
        server: group.to_vec(),
        cport: port,
        sport: port,
        proto: 17,
        c2s: (n, n * 90),
        s2c: (0, 0),
        app: "nmea0183",
        ops: vec![
            op(
                nmea::sentence_code(sentence.as_bytes()),
                sentence,
                OperationClass::Other,
                n,
            ),
            op(nmea::UDPBC, "udpbc", OperationClass::Other, n),
            tag,
            op(
                nmea::SOURCE,
                &format!("source:{sfi}"),
                OperationClass::Other,
                n,
            ),
        ],
    }
    .record()
}

/// A remote-access connection: `app` from `client` to `server:port` at
/// `t`, lasting `dur_s`, keystrokes one way and screens the other.
fn remote(
    t: i64,
    dur_s: i64,
    client: Vec<u8>,
    server: Vec<u8>,
    port: u32,
    app: &'static str,
) -> FlowRecord {
    Flow {
        t_us: t,
        dur_us: dur_s * 1_000_000,
        client,
        server,
        cport: 49_152 + port % 1000,
        sport: port,
        proto: 6,
        c2s: (dur_s as u64 * 4, dur_s as u64 * 400),
        s2c: (dur_s as u64 * 9, dur_s as u64 * 9_000),
        app,
        ops: Vec::new(),
    }
    .record()
}

/// A short TLS connection from `client` to `server:port` at `t`.
fn tls(t: i64, client: Vec<u8>, server: [u8; 4], port: u32) -> FlowRecord {
    Flow {
        t_us: t,
        dur_us: 3_000_000,
        client,
        server: server.to_vec(),
        cport: 45_000,
        sport: port,
        proto: 6,
        c2s: (12, 2_400),
        s2c: (14, 9_000),
        app: "tls",
        ops: Vec::new(),
    }
    .record()
}

fn vessel(s: &[SensorPlan], i: usize) -> String {
    s[i].vessel.clone()
}

/// Vessel `i`'s address `10.i.zone.host`, as text.
fn addr(i: usize, zone: u8, host: u8) -> String {
    text(&ip(10, i as u8, zone, host))
}

/// Every planted anomaly, in the order their truths are listed.
const ANOMALIES: &[Anomaly] = &[
    // A new asset (vessel 0, hour 6).
    Anomaly {
        when: |a| a.vessel == 0 && a.hw == 6,
        plant: |s, _, assets| {
            assets.push(asset(
                [0x02, 0x42, 0xac, 0, s.vb, 50],
                ip(10, s.vb, 1, 50),
                "Unknown Vendor Ltd",
                (s.us)(30),
                &[],
                &[],
            ))
        },
        truth: |t, s| t.new_assets.push((vessel(s, 0), addr(0, 1, 50))),
        ..Anomaly::NOTHING
    },
    // A new external destination (vessel 0, hour 5).
    Anomaly {
        when: |a| a.vessel == 0 && a.hw == 5,
        plant: |s, flows, _| flows.push(tls((s.us)(600), ip(10, s.vb, 3, 33), NEW_DEST, 443)),
        truth: |t, s| t.new_destinations.push((vessel(s, 0), text(&NEW_DEST))),
        ..Anomaly::NOTHING
    },
    // Beaconing (vessel 2): every 60 s ± 1 s for six hours, small and
    // constant, to a destination never seen before.
    Anomaly {
        when: |a| a.vessel == 2 && (2..8).contains(&a.hw),
        plant: |s, flows, _| {
            for k in 0..60i64 {
                let jitter = (k * 7 % 3) - 1;
                flows.push(
                    Flow {
                        t_us: (s.us)(k * 60 + jitter),
                        dur_us: 150_000,
                        client: ip(10, s.vb, 2, 12),
                        server: BEACON.to_vec(),
                        cport: 52_000 + k as u32,
                        sport: 8443,
                        proto: 6,
                        c2s: (5, 620),
                        s2c: (4, 560),
                        app: "tls",
                        ops: Vec::new(),
                    }
                    .record(),
                );
            }
        },
        truth: |t, s| {
            t.new_destinations.push((vessel(s, 2), text(&BEACON)));
            t.beacons.push((
                vessel(s, 2),
                addr(2, 2, 12),
                format!("{}:8443", text(&BEACON)),
            ));
        },
        ..Anomaly::NOTHING
    },
    // A fleet-wide campaign: every vessel reaches a new destination
    // between hours 8 and 10 (before the silent sensor goes quiet).
    Anomaly {
        when: |a| a.hw == 8 + (a.vessel as u32 % 2),
        plant: |s, flows, _| {
            flows.push(tls(
                (s.us)(300 + (97 * s.vb as i64) % 3000),
                ip(10, s.vb, 2, 14),
                CAMPAIGN,
                443,
            ))
        },
        truth: |t, s| {
            for i in 0..s.len() {
                t.new_destinations.push((vessel(s, i), text(&CAMPAIGN)));
            }
            t.campaigns.push((
                text(&CAMPAIGN),
                (0..s.len()).map(|i| vessel(s, i)).collect(),
            ));
        },
        ..Anomaly::NOTHING
    },
    // A volume spike (vessel 1, hour 7): IT host .11 sends 500 MB to the
    // update server it checks every half hour (203.0.113.10 + 11 % 3).
    Anomaly {
        when: |a| a.vessel == 1 && a.hw == 7,
        plant: |s, flows, _| {
            flows.push(
                Flow {
                    t_us: (s.us)(11 * 7),
                    dur_us: 2_000_000,
                    client: ip(10, s.vb, 2, 11),
                    server: ip(203, 0, 113, 12),
                    cport: 30_011,
                    sport: 443,
                    proto: 6,
                    c2s: (350_000, 500_000_000),
                    s2c: (40, 50_000),
                    app: "tls",
                    ops: Vec::new(),
                }
                .record(),
            )
        },
        truth: |t, s| {
            t.volume_spikes.push((
                vessel(s, 1),
                addr(1, 2, 11),
                text(&ip(203, 0, 113, 12)),
                t.window_start_s + 7 * 3600,
            ))
        },
        ..Anomaly::NOTHING
    },
    // An OT write from a crew laptop (vessel 1, hour 9): an unexpected
    // writer and a crew -> OT segmentation break. Like a real sensor, this
    // one reports the laptop as an asset in the engineering-station role as
    // soon as it writes (so it is a new asset too).
    Anomaly {
        when: |a| a.vessel == 1 && a.hw == 9,
        plant: |s, flows, assets| {
            assets.push(asset(
                [0x18, 0x66, 0xda, 0, s.vb, 44],
                ip(10, s.vb, 3, 44),
                "Dell Inc.",
                (s.us)(1200),
                &["modbus"],
                &["engineering_station"],
            ));
            flows.push(
                Flow {
                    t_us: (s.us)(1200),
                    dur_us: 300_000,
                    client: ip(10, s.vb, 3, 44),
                    server: ip(10, s.vb, 1, 11),
                    cport: 51_515,
                    sport: 502,
                    proto: 6,
                    c2s: (4, 300),
                    s2c: (4, 280),
                    app: "modbus",
                    ops: vec![op(6, "write_single_register", OperationClass::Write, 2)],
                }
                .record(),
            );
        },
        truth: |t, s| {
            t.unexpected_ot_writes
                .push((vessel(s, 1), addr(1, 3, 44), addr(1, 1, 11)));
            t.segmentation_breaks.push((
                vessel(s, 1),
                addr(1, 3, 44),
                format!("{}:502", addr(1, 1, 11)),
            ));
            t.new_assets.push((vessel(s, 1), addr(1, 3, 44)));
        },
        ..Anomaly::NOTHING
    },
    // Inbound into OT from ashore (vessel 2, hour 11).
    Anomaly {
        when: |a| a.vessel == 2 && a.hw == 11,
        plant: |s, flows, _| {
            flows.push(
                Flow {
                    t_us: (s.us)(100),
                    dur_us: 900_000,
                    client: SHORE_INTRUDER.to_vec(),
                    server: ip(10, s.vb, 1, 10),
                    cport: 61_000,
                    sport: 502,
                    proto: 6,
                    c2s: (6, 420),
                    s2c: (6, 460),
                    app: "modbus",
                    ops: vec![op(3, "read_holding_registers", OperationClass::Read, 4)],
                }
                .record(),
            )
        },
        truth: |t, s| {
            t.segmentation_breaks.push((
                vessel(s, 2),
                text(&SHORE_INTRUDER),
                format!("{}:502", addr(2, 1, 10)),
            ))
        },
        ..Anomaly::NOTHING
    },
    // A crew host talking to the crane PLC (vessel 0, hour 12).
    Anomaly {
        when: |a| a.vessel == 0 && a.hw == 12,
        plant: |s, flows, _| {
            flows.push(
                Flow {
                    t_us: (s.us)(60),
                    dur_us: 500_000,
                    client: ip(10, s.vb, 3, 20),
                    server: ip(10, s.vb, 1, 14),
                    cport: 49_152,
                    sport: 102,
                    proto: 6,
                    c2s: (8, 600),
                    s2c: (8, 700),
                    app: "s7comm",
                    ops: vec![op(4, "read_var", OperationClass::Read, 2)],
                }
                .record(),
            )
        },
        truth: |t, s| {
            t.segmentation_breaks.push((
                vessel(s, 0),
                addr(0, 3, 20),
                format!("{}:102", addr(0, 1, 14)),
            ))
        },
        ..Anomaly::NOTHING
    },
    // A scan (vessel 1, hour 3) from the IT zone: every OT address on 502,
    // then the first 100 ports of one PLC; one SYN each, answered by RST or
    // nothing. Reaching into OT, it is a segmentation break too.
    Anomaly {
        when: |a| a.vessel == 1 && a.hw == 3,
        plant: |s, flows, _| {
            let scanner = ip(10, s.vb, 2, 99);
            for (i, (host, port)) in (1..=254u8)
                .map(|h| (h, 502u32))
                .chain((1..=100u32).map(|p| (10u8, p)))
                .enumerate()
            {
                flows.push(
                    Flow {
                        t_us: (s.us)(i as i64 / 10),
                        dur_us: 1_000,
                        client: scanner.clone(),
                        server: ip(10, s.vb, 1, host),
                        cport: 40_001,
                        sport: port,
                        proto: 6,
                        c2s: (1, 44),
                        s2c: (u64::from(host % 3 == 0), 40 * u64::from(host % 3 == 0)),
                        app: "",
                        ops: Vec::new(),
                    }
                    .record(),
                );
            }
        },
        truth: |t, s| {
            t.scans.push((vessel(s, 1), addr(1, 2, 99)));
            t.segmentation_breaks.push((
                vessel(s, 1),
                addr(1, 2, 99),
                format!("{}/24", addr(1, 1, 0)),
            ));
        },
        ..Anomaly::NOTHING
    },
    // A PLC answering with another vendor's MAC (vessel 2, hour 6).
    Anomaly {
        when: |a| a.vessel == 2 && a.hw == 6,
        plant: |s, _, assets| {
            assets.push(asset(
                [0x24, 0x0a, 0xc4, 0, s.vb, 12],
                ip(10, s.vb, 1, 12),
                "Espressif Inc.",
                (s.us)(30),
                &["modbus"],
                &["controller"],
            ))
        },
        truth: |t, s| {
            t.changed_vendors.push((
                vessel(s, 2),
                addr(2, 1, 12),
                "Siemens AG".into(),
                "Espressif Inc.".into(),
            ))
        },
        ..Anomaly::NOTHING
    },
    // A vendor's engineer logs into the OT zone from ashore over SSH for 25
    // minutes (vessel 3, hour 9): remote access, and a segmentation break.
    Anomaly {
        when: |a| a.vessel == 3 && a.hw == 9,
        plant: |s, flows, _| {
            flows.push(remote(
                (s.us)(200),
                1500,
                SHORE_VENDOR.to_vec(),
                ip(10, s.vb, 1, 30),
                22,
                "ssh",
            ));
        },
        truth: |t, s| {
            let (v, c, srv) = (vessel(s, 3), text(&SHORE_VENDOR), addr(3, 1, 30));
            t.remote_access
                .push((v.clone(), c.clone(), srv.clone(), "ssh".into()));
            t.segmentation_breaks.push((v, c, format!("{srv}:22")));
        },
        ..Anomaly::NOTHING
    },
    // VNC from a crew cabin to a PLC's panel on a port of its own (vessel
    // 1, hour 4); and, the same hour, RDP inside the OT zone, which
    // crosses nothing and is not listed.
    Anomaly {
        when: |a| a.vessel == 1 && a.hw == 4,
        plant: |s, flows, _| {
            flows.push(remote(
                (s.us)(900),
                300,
                ip(10, s.vb, 3, 40),
                ip(10, s.vb, 1, 11),
                5901,
                "vnc",
            ));
            flows.push(remote(
                (s.us)(1200),
                600,
                ip(10, s.vb, 1, 30),
                ip(10, s.vb, 1, 10),
                3389,
                "rdp",
            ));
        },
        truth: |t, s| {
            let (v, c, srv) = (vessel(s, 1), addr(1, 3, 40), addr(1, 1, 11));
            t.remote_access
                .push((v.clone(), c.clone(), srv.clone(), "vnc".into()));
            t.segmentation_breaks.push((v, c, format!("{srv}:5901")));
        },
        ..Anomaly::NOTHING
    },
    // The 61162-450 bridge network of vessel 2 (its talkers, 172.16.2.10
    // GNSS on NAVD and .20 AIS on TGTD, are the baseline of every vessel).
    // Hour 3: the GNSS sends TAG blocks with bad checksums.
    Anomaly {
        when: |a| a.vessel == 2 && a.hw == 3,
        plant: |s, flows, _| {
            flows.push(talker_450(
                (s.us)(5),
                ip(172, 16, s.vb, 10),
                NAVD,
                "GP0001",
                "GPGGA",
                40,
                12,
            ));
        },
        truth: |t, s| {
            t.bridge_450.push((
                vessel(s, 2),
                "bad_tag_checksum".into(),
                "172.16.2.10".into(),
                text(&NAVD),
            ));
        },
        ..Anomaly::NOTHING
    },
    // Hour 5: a second node sends as the GNSS (its SFI, GP0001).
    Anomaly {
        when: |a| a.vessel == 2 && a.hw == 5,
        plant: |s, flows, _| {
            flows.push(talker_450(
                (s.us)(60),
                ip(172, 16, s.vb, 99),
                NAVD,
                "GP0001",
                "GPRMC",
                30,
                0,
            ));
        },
        truth: |t, s| {
            for node in ["172.16.2.10", "172.16.2.99"] {
                t.bridge_450.push((
                    vessel(s, 2),
                    "sfi_conflict".into(),
                    node.into(),
                    text(&NAVD),
                ));
            }
        },
        ..Anomaly::NOTHING
    },
    // Hour 6: the AIS sends its target sentences to NAVD.
    Anomaly {
        when: |a| a.vessel == 2 && a.hw == 6,
        plant: |s, flows, _| {
            flows.push(talker_450(
                (s.us)(90),
                ip(172, 16, s.vb, 20),
                NAVD,
                "AI0001",
                "AIVDM",
                50,
                0,
            ));
        },
        truth: |t, s| {
            t.bridge_450.push((
                vessel(s, 2),
                "wrong_group".into(),
                "172.16.2.20".into(),
                text(&NAVD),
            ));
        },
        ..Anomaly::NOTHING
    },
    // Hour 8: something that is not 61162-450 multicasts into USR1.
    Anomaly {
        when: |a| a.vessel == 2 && a.hw == 8,
        plant: |s, flows, _| {
            flows.push(
                Flow {
                    t_us: (s.us)(120),
                    dur_us: 60_000_000,
                    client: ip(172, 16, s.vb, 50),
                    server: USR1.to_vec(),
                    cport: 50_000,
                    sport: 60_009,
                    proto: 17,
                    c2s: (300, 300 * 512),
                    s2c: (0, 0),
                    app: "",
                    ops: Vec::new(),
                }
                .record(),
            );
        },
        truth: |t, s| {
            t.bridge_450.push((
                vessel(s, 2),
                "non_450_in_reserved".into(),
                "172.16.2.50".into(),
                text(&USR1),
            ));
        },
        ..Anomaly::NOTHING
    },
    // Hour 9: a 61162-450 talker in the nav zone, outside 172.16.0.0/12.
    Anomaly {
        when: |a| a.vessel == 2 && a.hw == 9,
        plant: |s, flows, _| {
            flows.push(talker_450(
                (s.us)(30),
                ip(10, s.vb, 4, 77),
                NAVD,
                "II0077",
                "IIHDT",
                20,
                0,
            ));
        },
        truth: |t, s| {
            t.bridge_450.push((
                vessel(s, 2),
                "outside_450_network".into(),
                addr(2, 4, 77),
                text(&NAVD),
            ));
        },
        ..Anomaly::NOTHING
    },
    // Hour 10: the radar sends an image to the VDR (binary transfer).
    Anomaly {
        when: |a| a.vessel == 2 && a.hw == 10,
        plant: |s, flows, _| {
            flows.push(
                Flow {
                    t_us: (s.us)(400),
                    dur_us: 4_000_000,
                    client: ip(172, 16, s.vb, 30),
                    server: VDRD.to_vec(),
                    cport: 60_005,
                    sport: 60_005,
                    proto: 17,
                    c2s: (700, 700 * 1_400),
                    s2c: (0, 0),
                    app: "nmea0183",
                    ops: vec![op(
                        nmea::BINARY_IMAGE,
                        "binary_image_RaUdP",
                        OperationClass::Other,
                        700,
                    )],
                }
                .record(),
            );
        },
        truth: |t, s| {
            t.bridge_450.push((
                vessel(s, 2),
                "binary_transfer".into(),
                "172.16.2.30".into(),
                text(&VDRD),
            ));
        },
        ..Anomaly::NOTHING
    },
    // A PLC's firmware changes (vessel 1, hour 7): the same device, known
    // since the fleet's first hour, now reports another version.
    Anomaly {
        when: |a| a.vessel == 1 && a.hw == 7,
        plant: |s, _, assets| {
            let mut plc = identified(
                asset(
                    [0x00, 0x80, 0xf4, 0, s.vb, 13],
                    ip(10, s.vb, 1, 13),
                    "Schneider Electric",
                    s.start_us,
                    &["modbus"],
                    &["controller"],
                ),
                SCHNEIDER_PLC,
            );
            plc.firmware = "v3.1".into();
            plc.last_seen_us = (s.us)(40);
            assets.push(plc);
        },
        truth: |t, s| {
            t.changed_firmware.push((
                vessel(s, 1),
                addr(1, 1, 13),
                SCHNEIDER_PLC.2.into(),
                "v3.1".into(),
            ))
        },
        ..Anomaly::NOTHING
    },
    // The last sensor goes silent at hour 12.
    Anomaly {
        when: |a| a.vessel == a.vessels - 1 && a.hw >= 12,
        silences: true,
        truth: |t, s| {
            let last = &s[s.len() - 1];
            t.sensor_health
                .push((last.sensor_id.clone(), "silent".into()));
        },
        ..Anomaly::NOTHING
    },
    // Vessel 1's backlog grows all day.
    Anomaly {
        when: |a| a.vessel == 1,
        status: |st, a| {
            st.buffer_backlog_records = 2_000 * (a.hw as u64 + 1);
            st.buffer_backlog_bytes = 150_000 * (a.hw as u64 + 1);
        },
        truth: |t, s| {
            t.sensor_health
                .push((s[1].sensor_id.clone(), "backlog".into()))
        },
        ..Anomaly::NOTHING
    },
    // Vessel 2's sensor drops records from hour 6.
    Anomaly {
        when: |a| a.vessel == 2 && a.hw >= 6,
        status: |st, _| st.records_dropped = 5_000,
        truth: |t, s| {
            t.sensor_health
                .push((s[2].sensor_id.clone(), "drops".into()))
        },
        ..Anomaly::NOTHING
    },
    // Vessel 2's sensor also holds a batch the collector refused.
    Anomaly {
        when: |a| a.vessel == 2 && a.hw >= 6,
        status: |st, _| {
            st.batches_set_aside = 1;
            st.records_set_aside = 40;
            st.set_aside_reason = "ACK_STATUS_MALFORMED: payload is not a valid Batch".into();
        },
        truth: |t, s| {
            t.sensor_health
                .push((s[2].sensor_id.clone(), "set_aside".into()))
        },
        ..Anomaly::NOTHING
    },
    // Vessel 0 exhausts its daily budget from hour 18.
    Anomaly {
        when: |a| a.vessel == 0 && a.hw >= 18,
        status: |st, _| st.bytes_sent_today = st.daily_byte_budget,
        truth: |t, s| {
            t.sensor_health
                .push((s[0].sensor_id.clone(), "budget".into()))
        },
        ..Anomaly::NOTHING
    },
];

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
        let mut t = Truth {
            window_start_s: window,
            ..Truth::default()
        };
        for a in ANOMALIES {
            (a.truth)(&mut t, &sensors);
        }
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
        let at = At {
            vessel: s.index,
            vessels: spec.vessels,
            hw: ((hour_s - window).max(0) / 3600) as u32,
        };
        let planted: Vec<&Anomaly> = if last_day {
            ANOMALIES.iter().filter(|a| (a.when)(at)).collect()
        } else {
            Vec::new()
        };
        if planted.iter().any(|a| a.silences) {
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
                flows.push(
                    Flow {
                        t_us: t,
                        dur_us: 200_000,
                        client: hmi.clone(),
                        server: ip(10, vb, 1, p),
                        cport: 40_000 + rng.below(20_000) as u32,
                        sport: 502,
                        proto: 6,
                        c2s: (6, 420),
                        s2c: (6, 460),
                        app: "modbus",
                        ops: vec![op(3, "read_holding_registers", OperationClass::Read, 4)],
                    }
                    .record(),
                );
            }
            flows.push(
                Flow {
                    t_us: us(m * 600 + 30),
                    dur_us: 300_000,
                    client: hmi.clone(),
                    server: ip(10, vb, 1, 14),
                    cport: 40_000 + rng.below(20_000) as u32,
                    sport: 102,
                    proto: 6,
                    c2s: (8, 600),
                    s2c: (8, 700),
                    app: "s7comm",
                    ops: vec![op(4, "read_var", OperationClass::Read, 2)],
                }
                .record(),
            );
        }
        // The engineering station writes a setpoint once a day at 10:00.
        if h % 24 == 10 {
            flows.push(
                Flow {
                    t_us: us(5),
                    dur_us: 400_000,
                    client: eng.clone(),
                    server: ip(10, vb, 1, 10 + (h / 24 % 4) as u8),
                    cport: 50_000 + rng.below(10_000) as u32,
                    sport: 502,
                    proto: 6,
                    c2s: (4, 300),
                    s2c: (4, 280),
                    app: "modbus",
                    ops: vec![op(6, "write_single_register", OperationClass::Write, 2)],
                }
                .record(),
            );
        }
        // Navigation: the GPS broadcasts NMEA (two records an hour).
        for half in 0..2i64 {
            flows.push(
                Flow {
                    t_us: us(half * 1800),
                    dur_us: 1_799_000_000,
                    client: ip(10, vb, 4, 10),
                    server: ip(10, vb, 4, 255),
                    cport: 10110,
                    sport: 10110,
                    proto: 17,
                    c2s: (1800, 1800 * 110),
                    s2c: (0, 0),
                    app: "nmea0183",
                    ops: vec![op(
                        nmea::sentence_code(b"GPGGA"),
                        "GPGGA",
                        OperationClass::Other,
                        1800,
                    )],
                }
                .record(),
            );
        }
        // The 61162-450 bridge network: GNSS on NAVD, AIS on TGTD.
        flows.push(talker_450(
            us(1),
            ip(172, 16, vb, 10),
            NAVD,
            "GP0001",
            "GPGGA",
            3_600,
            0,
        ));
        flows.push(talker_450(
            us(1),
            ip(172, 16, vb, 20),
            TGTD,
            "AI0001",
            "AIVDM",
            600,
            0,
        ));
        // IT: update checks ashore, two an hour per host.
        for host in 10..=19u8 {
            for k in 0..2 {
                let server = ip(203, 0, 113, 10 + (host % 3));
                let up = (12 + rng.below(6), 1_500 + rng.below(800));
                flows.push(
                    Flow {
                        t_us: us(k * 1800 + host as i64 * 7 + rng.below(60) as i64),
                        dur_us: 2_000_000,
                        client: ip(10, vb, 2, host),
                        server,
                        cport: 30_000 + rng.below(30_000) as u32,
                        sport: 443,
                        proto: 6,
                        c2s: up,
                        s2c: (30 + rng.below(20), 40_000 + rng.below(20_000)),
                        app: "tls",
                        ops: Vec::new(),
                    }
                    .record(),
                );
            }
        }
        // Crew internet and DNS: the bulk.
        for _ in 0..100 * spec.scale {
            let host = 10 + rng.below(50) as u8;
            let site = 1 + rng.below(200) as u8;
            flows.push(
                Flow {
                    t_us: us(rng.below(3600) as i64),
                    dur_us: 5_000_000 + rng.below(60_000_000) as i64,
                    client: ip(10, vb, 3, host),
                    server: ip(198, 51, 100, site),
                    cport: 30_000 + rng.below(30_000) as u32,
                    sport: if rng.below(5) == 0 { 80 } else { 443 },
                    proto: 6,
                    c2s: (10 + rng.below(40), 2_000 + rng.below(20_000)),
                    s2c: (20 + rng.below(200), 20_000 + rng.below(2_000_000)),
                    app: "tls",
                    ops: Vec::new(),
                }
                .record(),
            );
        }
        for _ in 0..100 * spec.scale {
            let zone = if rng.below(2) == 0 { 2 } else { 3 };
            flows.push(
                Flow {
                    t_us: us(rng.below(3600) as i64),
                    dur_us: 20_000,
                    client: ip(10, vb, zone, 10 + rng.below(50) as u8),
                    server: ip(10, vb, 2, 1),
                    cport: 30_000 + rng.below(30_000) as u32,
                    sport: 53,
                    proto: 17,
                    c2s: (1, 70),
                    s2c: (1, 120),
                    app: "dns",
                    ops: Vec::new(),
                }
                .record(),
            );
        }
        if h == 0 {
            for p in 10..=14u8 {
                let (mac, vendor) = if p == 12 || p == 14 {
                    ([0x00, 0x1b, 0x1b, 0, vb, p], "Siemens AG")
                } else {
                    ([0x00, 0x80, 0xf4, 0, vb, p], "Schneider Electric")
                };
                let proto = if p == 14 { "s7comm" } else { "modbus" };
                let plc = asset(
                    mac,
                    ip(10, vb, 1, p),
                    vendor,
                    us(0),
                    &[proto],
                    &["controller"],
                );
                // Three PLCs of each vessel say who they are.
                assets.push(match p {
                    14 => identified(plc, SIEMENS_CPU),
                    10 | 13 => identified(plc, SCHNEIDER_PLC),
                    _ => plc,
                });
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

        let site = Site {
            vb,
            us: &us,
            start_us: spec.start_s * 1_000_000,
        };
        let mut status = self.status(hour_s);
        for a in &planted {
            (a.plant)(&site, &mut flows, &mut assets);
            (a.status)(&mut status, at);
        }
        Some(Batch {
            seq: h as u64 + 1,
            sensor_id: String::new(),
            created_us: (hour_s + 3599) * 1_000_000,
            flows,
            assets,
            status: vec![status],
        })
    }

    /// The hour's status record, before any planted health problem.
    fn status(&self, hour_s: i64) -> SensorStatus {
        SensorStatus {
            observed_us: (hour_s + 3599) * 1_000_000,
            capture_packets: 100_000,
            software_version: "fleetgen".into(),
            daily_byte_budget: 50_000_000,
            bytes_sent_today: 400_000 * ((hour_s % 86_400) / 3600 + 1) as u64,
            ..SensorStatus::default()
        }
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
                        "bridge": [format!("172.16.{v}.0/24")],
                    },
                    // What the baseline crosses: IT and crew ashore, crew
                    // to the DNS server in IT.
                    "conduits": [
                        {"from": "it", "to": "outside"},
                        {"from": "crew", "to": "outside", "ports": [80, 443]},
                        {"from": "crew", "to": "it", "ports": [53], "protocols": ["dns"]},
                    ],
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
            reqs.push(tidewatch_proto::codec::encode(
                &b,
                tidewatch_proto::codec::Layout::default(),
                Some(3),
            ));
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
    /// On a single ClickHouse server.
    pub fn start(spec: Spec) -> Loaded {
        Loaded::start_on(crate::Stack::start(), spec)
    }

    /// On the ClickHouse cluster of [`crate::Stack::start_cluster`].
    pub fn start_cluster(spec: Spec) -> Loaded {
        Loaded::start_on(crate::Stack::start_cluster(), spec)
    }

    /// Runs the detection service's streaming rules over the fleet (its own
    /// consumer group, the fleet's rules: new devices in the OT and crew
    /// zones) until vessel 2's zone-crossing alert for the inbound Modbus
    /// from ashore is stored, stops it, and acknowledges that alert for the
    /// record (by `chief-engineer`, with a note); returns the alert's id.
    pub fn acknowledged_intrusion_alert(&self) -> String {
        let stack = &self.stack;
        let rules = stack.path().join("fleet-rules.yaml");
        std::fs::write(
            &rules,
            "rules:\n  new-device:\n    zones: [ot, crew]\nscheduled: []\n",
        )
        .expect("rules file");
        let mut cmd = stack.collector();
        cmd.args(["detect", "--group", "fleet-detect", "--refresh-secs", "1"])
            .arg("--rules")
            .arg(&rules);
        let mut detector = crate::Proc::spawn("fleet-detect", stack.path(), &mut cmd);
        let sql = format!(
            "SELECT id FROM tidewatch.alerts WHERE vessel = '{}' AND rule = 'zone-crossing' \
             AND subject LIKE '{}%'",
            self.fleet.sensors[2].vessel,
            text(&SHORE_INTRUDER)
        );
        let id = crate::wait_until(
            std::time::Duration::from_secs(120),
            "vessel 2's zone-crossing alert",
            || {
                let out = stack.query(&sql).ok()?.trim().to_string();
                (!out.is_empty()).then_some(out)
            },
        );
        detector.kill();
        crate::run_ok(stack.collector().args([
            "alerts",
            "ack",
            &id,
            "--who",
            "chief-engineer",
            "--note",
            "vendor maintenance window, ticket 88",
        ]));
        id
    }

    /// `tidewatch-collector report e26` of `vessel` over the fleet's
    /// detection window (its last day), written into `out`, with `extra`
    /// flags; returns what it printed.
    pub fn report_e26(&self, vessel: &str, out: &std::path::Path, extra: &[&str]) -> String {
        let since = self.fleet.truth.window_start_s;
        crate::run_ok(
            self.stack
                .collector()
                .args(["report", "e26", "--vessel", vessel])
                .args(["--since", &since.to_string()])
                .args(["--until", &(since + 86_400).to_string()])
                .arg("--out-dir")
                .arg(out)
                .args(extra),
        )
    }

    fn start_on(stack: crate::Stack, spec: Spec) -> Loaded {
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

/// The retention in days (as `maintenance retention` takes it) that keeps
/// everything from the UTC day starting at `day_start_s` on, counted back
/// from today.
pub fn retention_keeping_from(day_start_s: u64) -> String {
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        / 86_400;
    (today - day_start_s / 86_400).to_string()
}
