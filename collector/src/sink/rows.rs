//! ClickHouse rows and their conversion from decoded batches. Field order and
//! names match the `*_raw` tables of the schema (RowBinary is positional).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use tidewatch_proto::limits::check_flow;
use tidewatch_proto::util::{flow_end_name, ip_text, now_us, transport_name, IpText};
use tidewatch_proto::v1::{
    AssetObservation, Batch, FlowRecord, IngestedBatch, OperationClass, SensorStatus,
};

/// A row type and the table it goes to: each table's name is declared once,
/// here, beside the row that fills it.
pub trait Table {
    const TABLE: &'static str;
    /// The UTC day (since the epoch) of the time the table is partitioned
    /// by: rows of one day are always in one partition (by day or by
    /// month), so inserts can be cut by day (see the sink's insert).
    fn day(&self) -> i64;
}

const US_PER_DAY: i64 = 86_400_000_000;

/// Every table the sink writes, in insert order (the ledger last).
pub const TABLES: [&str; 6] = [
    FlowRow::TABLE,
    TrafficHourlyRow::TABLE,
    DestHourlyRow::TABLE,
    AssetRow::TABLE,
    StatusRow::TABLE,
    BatchRow::TABLE,
];

impl Table for FlowRow {
    const TABLE: &'static str = "flows_raw";
    fn day(&self) -> i64 {
        self.first_seen_us.div_euclid(US_PER_DAY)
    }
}
impl Table for AssetRow {
    const TABLE: &'static str = "assets_raw";
    fn day(&self) -> i64 {
        self.last_seen_us.div_euclid(US_PER_DAY)
    }
}
impl Table for StatusRow {
    const TABLE: &'static str = "sensor_status_raw";
    fn day(&self) -> i64 {
        self.observed_us.div_euclid(US_PER_DAY)
    }
}
impl Table for TrafficHourlyRow {
    const TABLE: &'static str = "traffic_hourly_raw";
    fn day(&self) -> i64 {
        self.hour as i64 / 86_400
    }
}
impl Table for DestHourlyRow {
    const TABLE: &'static str = "dest_hourly_raw";
    fn day(&self) -> i64 {
        self.hour as i64 / 86_400
    }
}
/// The batch ledger: one row per stored batch, what the sink's dedup reads
/// (not partitioned).
impl Table for BatchRow {
    const TABLE: &'static str = "batches";
    fn day(&self) -> i64 {
        0
    }
}

/// Text, shared by every row of a batch (its sensor and vessel): a row
/// holds a reference, not a copy.
pub type Shared = Arc<str>;

/// Writes an address as the text the schema's String column holds.
fn as_text<S: serde::Serializer>(ip: &IpText, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(ip.as_str())
}

/// A flow's row. Built without an allocation of its own: the sensor and
/// vessel are shared by the batch's rows, the addresses are inline text,
/// and the strings and lists are moved out of the decoded record.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct FlowRow {
    pub sensor_id: Shared,
    pub vessel: Shared,
    pub batch_seq: u64,
    pub record_idx: u32,
    pub received_at: u32,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    #[serde(serialize_with = "as_text")]
    pub client_ip: IpText,
    #[serde(serialize_with = "as_text")]
    pub server_ip: IpText,
    pub client_port: u16,
    pub server_port: u16,
    pub ip_protocol: u8,
    pub transport: Cow<'static, str>,
    pub app_protocol: String,
    pub vlan: u16,
    pub c2s_packets: u64,
    pub c2s_bytes: u64,
    pub c2s_payload_bytes: u64,
    pub c2s_tcp_flags: u8,
    pub s2c_packets: u64,
    pub s2c_bytes: u64,
    pub s2c_payload_bytes: u64,
    pub s2c_tcp_flags: u8,
    pub end_reason: &'static str,
    pub op_codes: Vec<u32>,
    pub op_names: Vec<String>,
    pub op_classes: Vec<&'static str>,
    pub op_counts: Vec<u64>,
    pub op_errors: Vec<u64>,
    pub indicators: Vec<String>,
}

/// The hourly rollup of a batch's flows per destination service: one row
/// per (batch, hour, server, port, transport, protocol). Keyed by its
/// batch, so a batch stored twice collapses (ReplacingMergeTree).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct TrafficHourlyRow {
    pub vessel: Shared,
    pub sensor_id: Shared,
    pub batch_seq: u64,
    pub hour: u32,
    #[serde(serialize_with = "as_text")]
    pub server_ip: IpText,
    pub server_port: u16,
    pub transport: Cow<'static, str>,
    pub app_protocol: String,
    pub flows: u64,
    pub packets: u64,
    pub c2s_bytes: u64,
    pub s2c_bytes: u64,
    pub first_flow_us: i64,
}

/// The hourly rollup of a batch's flows per destination address.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct DestHourlyRow {
    pub vessel: Shared,
    pub sensor_id: Shared,
    pub batch_seq: u64,
    pub hour: u32,
    #[serde(serialize_with = "as_text")]
    pub server_ip: IpText,
    pub flows: u64,
    pub c2s_bytes: u64,
    pub s2c_bytes: u64,
}

/// Numbers for the distinct values of one kind (`id`, in order of first
/// sight), and then their ranks in the values' order (`ranks`): each value
/// is hashed once, and a run of equal values (a batch's vessel and sensor)
/// not at all.
struct Ranks<K> {
    ids: HashMap<K, u32, foldhash::fast::RandomState>,
    last: Option<(K, u32)>,
}

impl<K: Copy + Eq + Ord + std::hash::Hash> Ranks<K> {
    fn new() -> Self {
        Ranks {
            ids: HashMap::default(),
            last: None,
        }
    }

    fn id(&mut self, k: K) -> u32 {
        match self.last {
            Some((last, id)) if last == k => id,
            _ => {
                let next = self.ids.len() as u32;
                let id = *self.ids.entry(k).or_insert(next);
                self.last = Some((k, id));
                id
            }
        }
    }

    /// The rank of each id's value among all values seen, by id.
    fn ranks(self) -> Vec<u32> {
        let mut by_value: Vec<(K, u32)> = self.ids.into_iter().collect();
        by_value.sort_unstable();
        let mut rank = vec![0; by_value.len()];
        for (r, (_, id)) in by_value.into_iter().enumerate() {
            rank[id as usize] = r as u32;
        }
        rank
    }
}

/// The hourly rollups of stored flow rows, aggregated per batch here
/// rather than by materialized views in ClickHouse (which took half of an
/// insert's time there); each row keyed by its batch and hour.
///
/// The flows are sorted (by index) in the order of the traffic table's
/// sorting key, which also groups each row's flows together; the
/// destination rows are the traffic rows of one vessel, hour and address
/// summed per batch. Both come out in their tables' order, which ClickHouse
/// stores without sorting again (measured: rows in no order took twice the
/// insert time).
pub fn rollups<'a>(
    flows: impl Iterator<Item = &'a FlowRow>,
) -> (Vec<TrafficHourlyRow>, Vec<DestHourlyRow>) {
    let flows: Vec<&FlowRow> = flows.collect();
    let hour = |f: &FlowRow| {
        let secs = f.first_seen_us.div_euclid(1_000_000);
        (secs - secs.rem_euclid(3600)).clamp(0, u32::MAX as i64) as u32
    };
    // traffic_hourly_raw's sorting key, with each text replaced by its rank
    // among the chunk's values: a sort compares integers, not strings
    // behind pointers (which was a third of the sink's time).
    let (mut vessels, mut addresses, mut transports, mut apps, mut sensors) = (
        Ranks::new(),
        Ranks::new(),
        Ranks::new(),
        Ranks::new(),
        Ranks::new(),
    );
    type ServiceKey = (u32, u32, u32, u16, u32, u32, u32, u64);
    let mut keyed: Vec<(ServiceKey, u32)> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let key = (
                vessels.id(&*f.vessel),
                hour(f),
                addresses.id(f.server_ip),
                f.server_port,
                transports.id(&*f.transport),
                apps.id(f.app_protocol.as_str()),
                sensors.id(&*f.sensor_id),
                f.batch_seq,
            );
            (key, i as u32)
        })
        .collect();
    let (vessels, addresses, transports, apps, sensors) = (
        vessels.ranks(),
        addresses.ranks(),
        transports.ranks(),
        apps.ranks(),
        sensors.ranks(),
    );
    for (k, _) in &mut keyed {
        k.0 = vessels[k.0 as usize];
        k.2 = addresses[k.2 as usize];
        k.4 = transports[k.4 as usize];
        k.5 = apps[k.5 as usize];
        k.6 = sensors[k.6 as usize];
    }
    keyed.sort_unstable();
    let order = keyed.iter().map(|&(k, i)| (k, flows[i as usize]));
    let mut traffic: Vec<TrafficHourlyRow> = Vec::new();
    let mut last: Option<ServiceKey> = None;
    for (k, f) in order {
        if last != Some(k) {
            traffic.push(TrafficHourlyRow {
                vessel: f.vessel.clone(),
                sensor_id: f.sensor_id.clone(),
                batch_seq: f.batch_seq,
                hour: k.1,
                server_ip: f.server_ip,
                server_port: f.server_port,
                transport: f.transport.clone(),
                app_protocol: f.app_protocol.clone(),
                flows: 0,
                packets: 0,
                c2s_bytes: 0,
                s2c_bytes: 0,
                first_flow_us: i64::MAX,
            });
            last = Some(k);
        }
        let t = traffic.last_mut().expect("pushed");
        t.flows += 1;
        t.packets += f.c2s_packets + f.s2c_packets;
        t.c2s_bytes += f.c2s_bytes;
        t.s2c_bytes += f.s2c_bytes;
        t.first_flow_us = t.first_flow_us.min(f.first_seen_us);
    }
    let mut dest: Vec<DestHourlyRow> = Vec::new();
    let mut rest = &traffic[..];
    while let Some(first) = rest.first() {
        // One vessel, hour and address: its services' rows, summed per batch.
        let same = |t: &TrafficHourlyRow| {
            (&t.vessel, t.hour, &t.server_ip) == (&first.vessel, first.hour, &first.server_ip)
        };
        let n = rest.iter().take_while(|t| same(t)).count();
        let mut group: Vec<&TrafficHourlyRow> = rest[..n].iter().collect();
        group.sort_by(|a, b| (&a.sensor_id, a.batch_seq).cmp(&(&b.sensor_id, b.batch_seq)));
        for t in group {
            match dest.last_mut() {
                Some(d)
                    if (&d.vessel, d.hour, &d.server_ip, &d.sensor_id, d.batch_seq)
                        == (&t.vessel, t.hour, &t.server_ip, &t.sensor_id, t.batch_seq) =>
                {
                    d.flows += t.flows;
                    d.c2s_bytes += t.c2s_bytes;
                    d.s2c_bytes += t.s2c_bytes;
                }
                _ => dest.push(DestHourlyRow {
                    vessel: t.vessel.clone(),
                    sensor_id: t.sensor_id.clone(),
                    batch_seq: t.batch_seq,
                    hour: t.hour,
                    server_ip: t.server_ip,
                    flows: t.flows,
                    c2s_bytes: t.c2s_bytes,
                    s2c_bytes: t.s2c_bytes,
                }),
            }
        }
        rest = &rest[n..];
    }
    (traffic, dest)
}

#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct AssetRow {
    pub sensor_id: Shared,
    pub vessel: Shared,
    pub batch_seq: u64,
    pub record_idx: u32,
    pub received_at: u32,
    pub mac: String,
    pub ips: Vec<String>,
    pub vendor: String,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub protocols: Vec<String>,
    pub roles: Vec<String>,
    pub device_vendor: String,
    pub product: String,
    pub firmware: String,
    pub serial: String,
    pub identity_protocol: String,
    pub software: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct StatusRow {
    pub sensor_id: Shared,
    pub vessel: Shared,
    pub batch_seq: u64,
    pub record_idx: u32,
    pub received_at: u32,
    pub observed_us: i64,
    pub capture_packets: u64,
    pub capture_drops: u64,
    pub buffer_backlog_bytes: u64,
    pub buffer_backlog_records: u64,
    pub records_dropped: u64,
    pub flows_evicted: u64,
    pub software_version: String,
    pub bytes_sent_today: u64,
    pub daily_byte_budget: u64,
    pub batches_set_aside: u64,
    pub records_set_aside: u64,
    pub set_aside_reason: String,
}

#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct BatchRow {
    pub sensor_id: Shared,
    pub vessel: Shared,
    pub seq: u64,
    pub received_at: u32,
    pub inserted_at: u32,
    pub flows: u32,
    pub assets: u32,
    pub statuses: u32,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub ingest_node: String,
}

/// Rows of one batch.
#[derive(Debug, Default)]
pub struct Rows {
    pub flows: Vec<FlowRow>,
    pub assets: Vec<AssetRow>,
    pub statuses: Vec<StatusRow>,
    pub batches: Vec<BatchRow>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.flows.len() + self.assets.len() + self.statuses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.batches.is_empty()
    }

    /// Every table's rows in its sorting-key order (sensor, batch,
    /// record), by reference: ClickHouse stores a block that arrives sorted
    /// without sorting it again. The ledger rows are sorted in place.
    pub fn in_insert_order(&mut self) -> InsertOrder<'_> {
        self.batches
            .sort_by(|a, b| (&a.sensor_id, a.seq).cmp(&(&b.sensor_id, b.seq)));
        InsertOrder {
            flows: in_batch_order(&self.flows),
            assets: in_batch_order(&self.assets),
            statuses: in_batch_order(&self.statuses),
            batches: self.batches.iter().collect(),
        }
    }

    /// Empties every table's rows, keeping their memory for the next chunk
    /// (fresh memory for each chunk's rows, page by page, was a fifth of
    /// the sink's time).
    pub fn clear(&mut self) {
        self.flows.clear();
        self.assets.clear();
        self.statuses.clear();
        self.batches.clear();
    }
}

/// A chunk's rows as they are inserted (see [`Rows::in_insert_order`]).
pub struct InsertOrder<'a> {
    pub flows: Vec<&'a FlowRow>,
    pub assets: Vec<&'a AssetRow>,
    pub statuses: Vec<&'a StatusRow>,
    pub batches: Vec<&'a BatchRow>,
}

/// `rows`, made of runs of one batch's rows each in record order (as
/// appended), in (sensor, batch, record) order: the runs are sorted, not
/// the rows.
fn in_batch_order<T: Record>(rows: &[T]) -> Vec<&T> {
    fn batch<T: Record>(r: &T) -> (&str, u64) {
        let (sensor, seq, _) = r.identity();
        (sensor, seq)
    }
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if batch(&rows[run.start]) == batch(r) => run.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs.sort_by(|a, b| batch(&rows[a.start]).cmp(&batch(&rows[b.start])));
    runs.into_iter().flat_map(|run| &rows[run]).collect()
}

/// A row of a record (flow, asset, status): its identity, which is its
/// table's sorting key.
trait Record {
    fn identity(&self) -> (&str, u64, u32);
}

macro_rules! record_identity {
    ($($row:ty),*) => {$(
        impl Record for $row {
            fn identity(&self) -> (&str, u64, u32) {
                (&self.sensor_id, self.batch_seq, self.record_idx)
            }
        }
    )*};
}
record_identity!(FlowRow, AssetRow, StatusRow);

fn class_name(c: i32) -> &'static str {
    match OperationClass::try_from(c).unwrap_or(OperationClass::Unspecified) {
        OperationClass::Read => "read",
        OperationClass::Write => "write",
        OperationClass::Control => "control",
        OperationClass::Program => "program",
        OperationClass::Diagnostic => "diagnostic",
        OperationClass::Other => "other",
        OperationClass::Unspecified => "",
    }
}

fn secs(us: i64) -> u32 {
    (us.max(0) / 1_000_000).min(u32::MAX as i64) as u32
}

/// A record of a batch that is not stored (the rest of the batch is), and
/// why: for the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    /// "flow", "asset" or "status".
    pub kind: &'static str,
    pub idx: usize,
    /// The record, protobuf-encoded.
    pub value: Vec<u8>,
    pub reason: String,
}

/// The capture times the sink stores: from 2000-01-01 (and, if set, at
/// most `max_age_us` before the batch was received) to `max_ahead_us` after
/// it was received. Outside it a record's clock was wrong (a sensor at 1970
/// or in the future): stored, it would be expired at once by the TTL, or
/// kept for ever. Old captures replayed are within it.
#[derive(Debug, Clone, Copy)]
pub struct TimeWindow {
    /// 0: no limit but 2000-01-01.
    pub max_age_us: i64,
    pub max_ahead_us: i64,
}

/// 2000-01-01T00:00:00Z in microseconds.
const EARLIEST_US: i64 = 946_684_800_000_000;

impl TimeWindow {
    /// Why `t_us` is outside the window around `received_us`, if it is.
    fn check(&self, what: &str, t_us: i64, received_us: i64) -> Result<(), String> {
        let days = |d: i64| d as f64 / US_PER_DAY as f64;
        if t_us < EARLIEST_US {
            Err(format!("{what} {t_us} µs is before 2000-01-01"))
        } else if self.max_age_us > 0 && t_us < received_us.saturating_sub(self.max_age_us) {
            Err(format!(
                "{what} {t_us} µs is {:.1} days before the batch was received (at most {:.1} stored)",
                days(received_us.saturating_sub(t_us)),
                days(self.max_age_us)
            ))
        } else if t_us > received_us.saturating_add(self.max_ahead_us) {
            Err(format!(
                "{what} {t_us} µs is {:.1} days after the batch was received (at most {:.1} ahead)",
                days(t_us.saturating_sub(received_us)),
                days(self.max_ahead_us)
            ))
        } else {
            Ok(())
        }
    }
}

/// What every row of one batch shares: made once per batch.
struct Origin {
    sensor_id: Shared,
    vessel: Shared,
    batch_seq: u64,
    received_at: u32,
}

/// A flow's row; its record was checked ([`check_flow`]), and its strings
/// and lists move into the row.
fn flow_row(o: &Origin, idx: usize, f: FlowRecord) -> FlowRow {
    let c2s = f.c2s.unwrap_or_default();
    let s2c = f.s2c.unwrap_or_default();
    let ip = |b: &[u8]| IpText::of(b).expect("address length checked");
    let port = |p: u32| p as u16; // checked
    let mut op_names = Vec::with_capacity(f.operations.len());
    let (mut op_codes, mut op_classes, mut op_counts, mut op_errors) = (
        Vec::with_capacity(f.operations.len()),
        Vec::with_capacity(f.operations.len()),
        Vec::with_capacity(f.operations.len()),
        Vec::with_capacity(f.operations.len()),
    );
    for op in f.operations {
        op_codes.push(op.code);
        op_classes.push(class_name(op.class));
        op_counts.push(op.count);
        op_errors.push(op.errors);
        op_names.push(op.name);
    }
    FlowRow {
        sensor_id: o.sensor_id.clone(),
        vessel: o.vessel.clone(),
        batch_seq: o.batch_seq,
        record_idx: idx as u32,
        received_at: o.received_at,
        first_seen_us: f.first_seen_us,
        last_seen_us: f.last_seen_us,
        client_ip: ip(&f.client_ip),
        server_ip: ip(&f.server_ip),
        client_port: port(f.client_port),
        server_port: port(f.server_port),
        ip_protocol: (f.ip_protocol & 0xff) as u8,
        transport: transport_name(f.ip_protocol),
        app_protocol: f.app_protocol,
        vlan: (f.vlan & 0x0fff) as u16,
        c2s_packets: c2s.packets,
        c2s_bytes: c2s.ip_bytes,
        c2s_payload_bytes: c2s.payload_bytes,
        c2s_tcp_flags: (c2s.tcp_flags & 0xff) as u8,
        s2c_packets: s2c.packets,
        s2c_bytes: s2c.ip_bytes,
        s2c_payload_bytes: s2c.payload_bytes,
        s2c_tcp_flags: (s2c.tcp_flags & 0xff) as u8,
        end_reason: flow_end_name(f.end),
        op_codes,
        op_names,
        op_classes,
        op_counts,
        op_errors,
        indicators: f.indicators,
    }
}

fn asset_row(o: &Origin, idx: usize, a: AssetObservation) -> AssetRow {
    AssetRow {
        sensor_id: o.sensor_id.clone(),
        vessel: o.vessel.clone(),
        batch_seq: o.batch_seq,
        record_idx: idx as u32,
        received_at: o.received_at,
        mac: tidewatch_proto::util::mac_text(&a.mac),
        ips: a.ips.iter().filter_map(|b| ip_text(b)).collect(),
        vendor: a.vendor,
        first_seen_us: a.first_seen_us,
        last_seen_us: a.last_seen_us,
        protocols: a.protocols,
        roles: a.roles,
        device_vendor: a.device_vendor,
        product: a.product,
        firmware: a.firmware,
        serial: a.serial,
        identity_protocol: a.identity_protocol,
        software: a.software,
    }
}

fn status_row(o: &Origin, idx: usize, s: SensorStatus) -> StatusRow {
    StatusRow {
        sensor_id: o.sensor_id.clone(),
        vessel: o.vessel.clone(),
        batch_seq: o.batch_seq,
        record_idx: idx as u32,
        received_at: o.received_at,
        observed_us: s.observed_us,
        capture_packets: s.capture_packets,
        capture_drops: s.capture_drops,
        buffer_backlog_bytes: s.buffer_backlog_bytes,
        buffer_backlog_records: s.buffer_backlog_records,
        records_dropped: s.records_dropped,
        flows_evicted: s.flows_evicted,
        software_version: s.software_version,
        bytes_sent_today: s.bytes_sent_today,
        daily_byte_budget: s.daily_byte_budget,
        batches_set_aside: s.batches_set_aside,
        records_set_aside: s.records_set_aside,
        set_aside_reason: s.set_aside_reason,
    }
}

/// The rows `row` makes of `records` (by index), appended to `out`; a
/// record `storable` refuses goes to `bad` as a [`BadRecord`] of `kind`
/// with the reason. Returns how many rows were kept.
fn keep_storable<R: prost::Message, T>(
    records: Vec<R>,
    kind: &'static str,
    out: &mut Vec<T>,
    bad: &mut Vec<BadRecord>,
    storable: impl Fn(&R) -> Result<(), String>,
    row: impl Fn(usize, R) -> T,
) -> u32 {
    let mut kept = 0;
    out.reserve(records.len());
    for (idx, r) in records.into_iter().enumerate() {
        match storable(&r) {
            Ok(()) => {
                out.push(row(idx, r));
                kept += 1;
            }
            Err(reason) => bad.push(BadRecord {
                kind,
                idx,
                value: r.encode_to_vec(),
                reason,
            }),
        }
    }
    kept
}

/// Appends the rows of one batch to `out`; returns its records that cannot
/// be stored (for the dead-letter topic, one by one), which are left out:
/// flows that fail [`check_flow`], and records whose time is outside
/// `window`. Each row keeps its record's index in the batch.
pub fn append_rows(
    env: &IngestedBatch,
    batch: Batch,
    window: TimeWindow,
    partition: i32,
    offset: i64,
    out: &mut Rows,
) -> Vec<BadRecord> {
    let rx = env.received_us;
    let o = Origin {
        sensor_id: env.sensor_id.as_str().into(),
        vessel: env.vessel.as_str().into(),
        batch_seq: env.seq,
        received_at: secs(env.received_us),
    };
    let mut bad = Vec::new();
    let flows = keep_storable(
        batch.flows,
        "flow",
        &mut out.flows,
        &mut bad,
        |f| {
            window.check("first_seen", f.first_seen_us, rx)?;
            check_flow(f).map_err(|e| e.to_string())
        },
        |i, f| flow_row(&o, i, f),
    );
    let assets = keep_storable(
        batch.assets,
        "asset",
        &mut out.assets,
        &mut bad,
        |a| window.check("last_seen", a.last_seen_us, rx),
        |i, a| asset_row(&o, i, a),
    );
    let statuses = keep_storable(
        batch.status,
        "status",
        &mut out.statuses,
        &mut bad,
        |st| window.check("observed", st.observed_us, rx),
        |i, st| status_row(&o, i, st),
    );
    out.batches.push(BatchRow {
        sensor_id: o.sensor_id,
        vessel: o.vessel,
        seq: env.seq,
        received_at: o.received_at,
        inserted_at: secs(now_us()),
        flows,
        assets,
        statuses,
        kafka_partition: partition,
        kafka_offset: offset,
        ingest_node: env.ingest_node.clone(),
    });
    bad
}

#[cfg(test)]
mod rollup_tests {
    use super::*;

    fn flow(seq: u64, at_s: i64, server: &str, port: u16, bytes: u64) -> FlowRow {
        FlowRow {
            sensor_id: "s1".into(),
            vessel: "v".into(),
            batch_seq: seq,
            record_idx: 0,
            received_at: 0,
            first_seen_us: at_s * 1_000_000,
            last_seen_us: at_s * 1_000_000,
            client_ip: IpText::of(&[10, 0, 0, 1]).unwrap(),
            server_ip: IpText::of(&server.parse::<std::net::Ipv4Addr>().unwrap().octets()).unwrap(),
            client_port: 40_000,
            server_port: port,
            ip_protocol: 6,
            transport: "tcp".into(),
            app_protocol: "tls".into(),
            vlan: 0,
            c2s_packets: 2,
            c2s_bytes: bytes,
            c2s_payload_bytes: 0,
            c2s_tcp_flags: 0,
            s2c_packets: 1,
            s2c_bytes: 10,
            s2c_payload_bytes: 0,
            s2c_tcp_flags: 0,
            end_reason: "fin",
            op_codes: vec![],
            op_names: vec![],
            op_classes: vec![],
            op_counts: vec![],
            op_errors: vec![],
            indicators: vec![],
        }
    }

    #[test]
    fn rows_are_inserted_in_batch_order_whatever_order_batches_came_in() {
        // Two partitions' batches, interleaved as a chunk gathers them.
        let mut rows = Rows::default();
        for seq in [3u64, 1, 4, 2] {
            for idx in 0..3 {
                rows.flows.push(FlowRow {
                    record_idx: idx,
                    ..flow(seq, 1_767_225_600, "192.0.2.1", 443, 1)
                });
            }
        }
        let order: Vec<(u64, u32)> = rows
            .in_insert_order()
            .flows
            .iter()
            .map(|f| (f.batch_seq, f.record_idx))
            .collect();
        let expected: Vec<(u64, u32)> = (1..=4).flat_map(|s| (0..3).map(move |i| (s, i))).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn rollup_rows_come_in_their_tables_sorting_key_order() {
        let h = 1_767_225_600;
        let mut flows = Vec::new();
        for (i, server) in ["192.0.2.9", "10.0.0.2", "192.0.2.10", "10.0.0.2"]
            .iter()
            .enumerate()
        {
            for seq in [2u64, 1] {
                let mut f = flow(
                    seq,
                    h + 7200 - 3600 * (i as i64 % 2),
                    server,
                    443 - i as u16,
                    1,
                );
                f.vessel = if i == 3 { "a".into() } else { "v".into() };
                flows.push(f);
            }
        }
        let (traffic, dest) = rollups(flows.iter());
        let t: Vec<_> = traffic
            .iter()
            .map(|r| {
                (
                    r.vessel.clone(),
                    r.hour,
                    r.server_ip,
                    r.server_port,
                    r.batch_seq,
                )
            })
            .collect();
        let mut sorted = t.clone();
        sorted.sort();
        assert_eq!(t, sorted);
        assert_eq!(t.len(), 8);
        let d: Vec<_> = dest
            .iter()
            .map(|r| (r.vessel.clone(), r.hour, r.server_ip, r.batch_seq))
            .collect();
        let mut sorted = d.clone();
        sorted.sort();
        assert_eq!(d, sorted);
        assert_eq!(d.len(), 8);
    }

    #[test]
    fn rollups_are_per_batch_hour_and_destination() {
        let h = 1_767_225_600; // an hour start
        let flows = [
            flow(1, h + 5, "192.0.2.1", 443, 100),
            flow(1, h + 3599, "192.0.2.1", 443, 50),
            flow(1, h + 3600, "192.0.2.1", 443, 7), // the next hour
            flow(1, h + 10, "192.0.2.1", 80, 1),    // another port, same address
            flow(2, h + 20, "192.0.2.1", 443, 1000), // another batch
        ];
        let (traffic, dest) = rollups(flows.iter());
        let mut t: Vec<(u64, u32, u16, u64, u64, u64, i64)> = traffic
            .iter()
            .map(|r| {
                (
                    r.batch_seq,
                    r.hour,
                    r.server_port,
                    r.flows,
                    r.packets,
                    r.c2s_bytes,
                    r.first_flow_us,
                )
            })
            .collect();
        t.sort();
        let h = h as u32;
        assert_eq!(
            t,
            [
                (1, h, 80, 1, 3, 1, (h as i64 + 10) * 1_000_000),
                (1, h, 443, 2, 6, 150, (h as i64 + 5) * 1_000_000),
                (1, h + 3600, 443, 1, 3, 7, (h as i64 + 3600) * 1_000_000),
                (2, h, 443, 1, 3, 1000, (h as i64 + 20) * 1_000_000),
            ]
        );
        let mut d: Vec<(u64, u32, u64, u64, u64)> = dest
            .iter()
            .map(|r| (r.batch_seq, r.hour, r.flows, r.c2s_bytes, r.s2c_bytes))
            .collect();
        d.sort();
        assert_eq!(
            d,
            [
                (1, h, 3, 151, 30),
                (1, h + 3600, 1, 7, 10),
                (2, h, 1, 1000, 10)
            ]
        );
    }
}
