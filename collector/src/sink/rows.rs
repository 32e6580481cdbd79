//! ClickHouse rows and their conversion from decoded batches. Field order and
//! names match the `*_raw` tables of the schema (RowBinary is positional).

use tidewatch_proto::limits::{check_flow, RecordError};
use tidewatch_proto::util::{flow_end_name, ip_text, now_us, transport_name};
use tidewatch_proto::v1::{
    AssetObservation, Batch, FlowRecord, IngestedBatch, OperationClass, SensorStatus,
};

/// A row type and the table it goes to: each table's name is declared once,
/// here, beside the row that fills it.
pub trait Table {
    const TABLE: &'static str;
}

/// Every table the sink writes, in insert order (the ledger last).
pub const TABLES: [&str; 4] = [
    FlowRow::TABLE,
    AssetRow::TABLE,
    StatusRow::TABLE,
    BatchRow::TABLE,
];

impl Table for FlowRow {
    const TABLE: &'static str = "flows_raw";
}
impl Table for AssetRow {
    const TABLE: &'static str = "assets_raw";
}
impl Table for StatusRow {
    const TABLE: &'static str = "sensor_status_raw";
}
/// The batch ledger: one row per stored batch, what the sink's dedup reads.
impl Table for BatchRow {
    const TABLE: &'static str = "batches";
}

#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct FlowRow {
    pub sensor_id: String,
    pub vessel: String,
    pub batch_seq: u64,
    pub record_idx: u32,
    pub received_at: u32,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub client_ip: String,
    pub server_ip: String,
    pub client_port: u16,
    pub server_port: u16,
    pub ip_protocol: u8,
    pub transport: String,
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
    pub end_reason: String,
    pub op_codes: Vec<u32>,
    pub op_names: Vec<String>,
    pub op_classes: Vec<String>,
    pub op_counts: Vec<u64>,
    pub op_errors: Vec<u64>,
    pub indicators: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct AssetRow {
    pub sensor_id: String,
    pub vessel: String,
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
}

#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct StatusRow {
    pub sensor_id: String,
    pub vessel: String,
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
    pub sensor_id: String,
    pub vessel: String,
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
}

fn class_name(c: i32) -> String {
    match OperationClass::try_from(c).unwrap_or(OperationClass::Unspecified) {
        OperationClass::Read => "read",
        OperationClass::Write => "write",
        OperationClass::Control => "control",
        OperationClass::Program => "program",
        OperationClass::Diagnostic => "diagnostic",
        OperationClass::Other => "other",
        OperationClass::Unspecified => "",
    }
    .into()
}

fn secs(us: i64) -> u32 {
    (us.max(0) / 1_000_000).min(u32::MAX as i64) as u32
}

/// A flow record of a batch that cannot be stored (the rest of the batch
/// is), and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadFlow {
    pub idx: usize,
    pub record: FlowRecord,
    pub error: RecordError,
}

fn flow_row(env: &IngestedBatch, idx: usize, f: &FlowRecord) -> Result<FlowRow, RecordError> {
    check_flow(f)?;
    let c2s = f.c2s.unwrap_or_default();
    let s2c = f.s2c.unwrap_or_default();
    let ip = |b: &[u8]| ip_text(b).expect("address length checked");
    let port = |p: u32| p as u16; // checked
    Ok(FlowRow {
        sensor_id: env.sensor_id.clone(),
        vessel: env.vessel.clone(),
        batch_seq: env.seq,
        record_idx: idx as u32,
        received_at: secs(env.received_us),
        first_seen_us: f.first_seen_us,
        last_seen_us: f.last_seen_us,
        client_ip: ip(&f.client_ip),
        server_ip: ip(&f.server_ip),
        client_port: port(f.client_port),
        server_port: port(f.server_port),
        ip_protocol: (f.ip_protocol & 0xff) as u8,
        transport: transport_name(f.ip_protocol).into_owned(),
        app_protocol: f.app_protocol.clone(),
        vlan: (f.vlan & 0x0fff) as u16,
        c2s_packets: c2s.packets,
        c2s_bytes: c2s.ip_bytes,
        c2s_payload_bytes: c2s.payload_bytes,
        c2s_tcp_flags: (c2s.tcp_flags & 0xff) as u8,
        s2c_packets: s2c.packets,
        s2c_bytes: s2c.ip_bytes,
        s2c_payload_bytes: s2c.payload_bytes,
        s2c_tcp_flags: (s2c.tcp_flags & 0xff) as u8,
        end_reason: flow_end_name(f.end).to_string(),
        op_codes: f.operations.iter().map(|o| o.code).collect(),
        op_names: f.operations.iter().map(|o| o.name.clone()).collect(),
        op_classes: f.operations.iter().map(|o| class_name(o.class)).collect(),
        op_counts: f.operations.iter().map(|o| o.count).collect(),
        op_errors: f.operations.iter().map(|o| o.errors).collect(),
        indicators: f.indicators.clone(),
    })
}

fn asset_row(env: &IngestedBatch, idx: usize, a: &AssetObservation) -> AssetRow {
    AssetRow {
        sensor_id: env.sensor_id.clone(),
        vessel: env.vessel.clone(),
        batch_seq: env.seq,
        record_idx: idx as u32,
        received_at: secs(env.received_us),
        mac: a
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        ips: a.ips.iter().filter_map(|b| ip_text(b)).collect(),
        vendor: a.vendor.clone(),
        first_seen_us: a.first_seen_us,
        last_seen_us: a.last_seen_us,
        protocols: a.protocols.clone(),
        roles: a.roles.clone(),
    }
}

fn status_row(env: &IngestedBatch, idx: usize, s: &SensorStatus) -> StatusRow {
    StatusRow {
        sensor_id: env.sensor_id.clone(),
        vessel: env.vessel.clone(),
        batch_seq: env.seq,
        record_idx: idx as u32,
        received_at: secs(env.received_us),
        observed_us: s.observed_us,
        capture_packets: s.capture_packets,
        capture_drops: s.capture_drops,
        buffer_backlog_bytes: s.buffer_backlog_bytes,
        buffer_backlog_records: s.buffer_backlog_records,
        records_dropped: s.records_dropped,
        flows_evicted: s.flows_evicted,
        software_version: s.software_version.clone(),
        bytes_sent_today: s.bytes_sent_today,
        daily_byte_budget: s.daily_byte_budget,
        batches_set_aside: s.batches_set_aside,
        records_set_aside: s.records_set_aside,
        set_aside_reason: s.set_aside_reason.clone(),
    }
}

/// Appends the rows of one batch to `out`; returns its flow records that
/// cannot be stored (for the dead-letter topic, one by one), which are left
/// out. Each row keeps its record's index in the batch.
pub fn append_rows(
    env: &IngestedBatch,
    batch: &Batch,
    partition: i32,
    offset: i64,
    out: &mut Rows,
) -> Vec<BadFlow> {
    let mut bad = Vec::new();
    for (i, f) in batch.flows.iter().enumerate() {
        match flow_row(env, i, f) {
            Ok(row) => out.flows.push(row),
            Err(error) => bad.push(BadFlow {
                idx: i,
                record: f.clone(),
                error,
            }),
        }
    }
    out.assets.extend(
        batch
            .assets
            .iter()
            .enumerate()
            .map(|(i, a)| asset_row(env, i, a)),
    );
    out.statuses.extend(
        batch
            .status
            .iter()
            .enumerate()
            .map(|(i, s)| status_row(env, i, s)),
    );
    out.batches.push(BatchRow {
        sensor_id: env.sensor_id.clone(),
        vessel: env.vessel.clone(),
        seq: env.seq,
        received_at: secs(env.received_us),
        inserted_at: secs(now_us()),
        flows: (batch.flows.len() - bad.len()) as u32,
        assets: batch.assets.len() as u32,
        statuses: batch.status.len() as u32,
        kafka_partition: partition,
        kafka_offset: offset,
        ingest_node: env.ingest_node.clone(),
    });
    bad
}
