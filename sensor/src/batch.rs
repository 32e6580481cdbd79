//! Batching: flow records -> `Batch` with a sensor-chosen, strictly increasing
//! `seq` -> encoded `UploadRequest`.
//!
//! `seq` must never repeat for one sensor identity, across restarts, and
//! across reinstalls too: the shore treats a repeated (sensor, seq) as a
//! duplicate and drops it. The counter is therefore persisted in
//! `STATE_DIR/seq` and reserved in blocks (written, fsynced and renamed into
//! place before any seq of the block is used); a crash skips at most the
//! rest of one block, which is harmless since seqs need to increase, not to
//! be contiguous. And on every start the counter moves up to at least the
//! wall clock in microseconds: a box replaced or reinstalled with the same
//! certificate (a new, or restored, state directory) starts above every seq
//! its earlier incarnation used, as long as its clock is right (a sensor
//! allocates far fewer than a million seqs a second). Ingest logs and counts
//! a seq far below what it saw from that sensor (a clock set back).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use tidewatch_proto::codec;

use tidewatch_proto::state_file::{self, Durability};
pub use tidewatch_proto::util::now_us;
use tidewatch_proto::v1::{
    AssetObservation, Batch, FlowRecord, OperationClass, SensorStatus, UploadRequest,
};

const SEQ_BLOCK: u64 = 4096;
/// 2024-01-01T00:00:00Z in microseconds: a clock before it is wrong.
const PLAUSIBLE_CLOCK_US: u64 = 1_704_067_200_000_000;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {content:?}")]
    Corrupt { path: PathBuf, content: String },
}

impl StateError {
    /// The filesystem (or the quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StateError::Io { source, .. } if tidewatch_proto::state_file::is_disk_full(source))
    }
}

/// Persistent allocator of batch sequence numbers.
pub struct SeqStore {
    path: PathBuf,
    next: u64,
    reserved_until: u64,
}

impl SeqStore {
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("seq");
        let next = match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| StateError::Corrupt {
                path: path.clone(),
                content: s.clone(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(io(e)),
        };
        let clock = u64::try_from(now_us()).unwrap_or(0);
        if clock < PLAUSIBLE_CLOCK_US {
            tracing::error!(
                clock_us = clock,
                "the system clock is before 2024: batch seqs are seeded from it, so a reinstalled                  sensor may reuse seqs the shore already holds (set the clock, e.g. with NTP)"
            );
        }
        let next = next.max(clock);
        Ok(SeqStore {
            path,
            next,
            reserved_until: next,
        })
    }

    /// The next unused seq (persisting a new block first when needed).
    pub fn allocate(&mut self) -> Result<u64, StateError> {
        if self.next >= self.reserved_until {
            let until = self.next + SEQ_BLOCK;
            self.persist(until)?;
            self.reserved_until = until;
        }
        let s = self.next;
        self.next += 1;
        Ok(s)
    }

    /// Makes sure at least `n` seqs are reserved on disk (so the next `n`
    /// allocations cannot fail).
    pub fn reserve(&mut self, n: u64) -> Result<(), StateError> {
        if self.next + n > self.reserved_until {
            let until = self.next + n.max(SEQ_BLOCK);
            self.persist(until)?;
            self.reserved_until = until;
        }
        Ok(())
    }

    fn persist(&self, value: u64) -> Result<(), StateError> {
        // Synced: a seq reused after a power loss would be dropped ashore
        // as a duplicate.
        state_file::replace(
            &self.path,
            format!("{value}\n").as_bytes(),
            Durability::Synced,
        )
        .map_err(|source| StateError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Upload priority of a batch. When the daily byte budget is tight the
/// uplink sends `Control` (sensor status, asset observations) first, then
/// `OtWrite` (flows with OT write, control or program operations), then
/// `Bulk` (every other flow). Each class has its own part of the disk buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    Control = 0,
    OtWrite = 1,
    #[default]
    Bulk = 2,
}

impl Priority {
    /// Highest priority first.
    pub const ALL: [Priority; 3] = [Priority::Control, Priority::OtWrite, Priority::Bulk];

    /// Stable name (buffer directory, metrics label, logs).
    pub fn name(self) -> &'static str {
        match self {
            Priority::Control => "control",
            Priority::OtWrite => "ot-write",
            Priority::Bulk => "bulk",
        }
    }

    /// `OtWrite` for a flow that wrote to, controlled or programmed an OT
    /// device; `Bulk` otherwise.
    pub fn of_flow(f: &FlowRecord) -> Priority {
        let writes = f.operations.iter().any(|o| {
            matches!(
                OperationClass::try_from(o.class),
                Ok(OperationClass::Write | OperationClass::Control | OperationClass::Program)
            )
        });
        if writes {
            Priority::OtWrite
        } else {
            Priority::Bulk
        }
    }
}

/// A batch ready to go on the wire, kept until the collector acks it.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    pub seq: u64,
    pub flows: usize,
    pub class: Priority,
    pub request: UploadRequest,
    /// Set by the uplink once the batch has been on the link (a later send
    /// is a resend).
    pub sent: bool,
}

/// Batch size limits. The encoded batch must stay below the collector's
/// maximum (1,000,000 bytes by default, in line with Kafka's default message
/// size); `max_bytes` keeps a margin under it.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub max_flows: usize,
    /// Largest batch payload (encoded, compressed if `compress`): records
    /// are grouped by their encoded size too, and a batch that still comes
    /// out larger is split.
    pub max_bytes: usize,
    pub compress: bool,
    pub zstd_level: i32,
    /// Protobuf or columns (see [`codec::Layout`]).
    pub layout: codec::Layout,
}

/// Default of [`BatchConfig::max_flows`] (and of `--batch-flows`): high
/// enough that a batch held while the link is the limit grows to the size
/// cap ([`DEFAULT_BATCH_MAX_BYTES`], about 5,000 flows of ordinary
/// traffic) rather than stopping at a count; a batch sealed every flush
/// interval on a link that keeps up is far below either.
pub const DEFAULT_BATCH_FLOWS: usize = 10_000;

/// Default of [`BatchConfig::max_bytes`] (and of `--batch-max-bytes`).
pub const DEFAULT_BATCH_MAX_BYTES: usize = 512 * 1024;

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_flows: DEFAULT_BATCH_FLOWS,
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
            compress: true,
            zstd_level: 3,
            layout: codec::Layout::default(),
        }
    }
}

/// Records of one [`Priority`] to be sealed into one batch (or more, should
/// it encode larger than the limit).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Group {
    pub class: Priority,
    pub flows: Vec<FlowRecord>,
    pub assets: Vec<AssetObservation>,
    pub status: Vec<SensorStatus>,
}

impl Group {
    fn records(&self) -> usize {
        self.flows.len() + self.assets.len() + self.status.len()
    }

    /// The two halves of a group of two records or more (a status stays
    /// with the first half), `None` for a single record.
    fn halves(mut self) -> Option<(Group, Group)> {
        if self.records() < 2 {
            return None;
        }
        let mut second = Group {
            class: self.class,
            ..Group::default()
        };
        if self.flows.len() >= 2 {
            second.flows = self.flows.split_off(self.flows.len() / 2);
        } else if self.assets.len() >= 2 {
            second.assets = self.assets.split_off(self.assets.len() / 2);
        } else if !self.flows.is_empty() {
            second.flows = std::mem::take(&mut self.flows);
        } else if !self.assets.is_empty() {
            second.assets = std::mem::take(&mut self.assets);
        } else {
            second.status = self.status.split_off(self.status.len() / 2);
        }
        Some((self, second))
    }
}

/// A group being filled: its records, their encoded size so far, and when
/// the first of them came.
#[derive(Default)]
struct Pending<T> {
    records: Vec<T>,
    bytes: usize,
    since: Option<Instant>,
}

impl<T: Message> Pending<T> {
    fn push(&mut self, r: T) {
        // The record's length and its field tag and length prefix.
        self.bytes += r.encoded_len() + 4;
        self.records.push(r);
        self.since.get_or_insert_with(Instant::now);
    }

    fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.since = None;
        std::mem::take(&mut self.records)
    }

    /// How long its oldest record has waited.
    fn age(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    fn is_full(&self, cfg: &BatchConfig) -> bool {
        self.records.len() >= cfg.max_flows.max(1) || self.bytes >= cfg.max_bytes
    }
}

/// Groups records by [`Priority`]: asset observations (and status) for
/// `Control` batches, flows for `OtWrite` or `Bulk` batches by their
/// operations; a group is full at `max_flows` records or `max_bytes` of
/// encoded records (so a full batch compresses below the limit).
pub struct Batcher {
    cfg: BatchConfig,
    assets: Pending<AssetObservation>,
    ot: Pending<FlowRecord>,
    bulk: Pending<FlowRecord>,
}

impl Batcher {
    pub fn new(cfg: BatchConfig) -> Self {
        Batcher {
            cfg,
            assets: Pending::default(),
            ot: Pending::default(),
            bulk: Pending::default(),
        }
    }

    /// Adds records; returns the groups that became full.
    pub fn push(&mut self, records: Vec<FlowRecord>, assets: Vec<AssetObservation>) -> Vec<Group> {
        let mut out = Vec::new();
        for r in records {
            let class = Priority::of_flow(&r);
            let cfg = self.cfg.clone();
            let pending = self.flows_mut(class);
            pending.push(r);
            if pending.is_full(&cfg) {
                let flows = self.flows_mut(class).take();
                out.push(Group {
                    class,
                    flows,
                    ..Group::default()
                });
            }
        }
        for a in assets {
            self.assets.push(a);
            if self.assets.is_full(&self.cfg) {
                out.push(Group {
                    class: Priority::Control,
                    assets: self.assets.take(),
                    ..Group::default()
                });
            }
        }
        out
    }

    fn flows_mut(&mut self, class: Priority) -> &mut Pending<FlowRecord> {
        match class {
            Priority::OtWrite => &mut self.ot,
            _ => &mut self.bulk,
        }
    }

    /// Everything pending, as groups (one per class with records; the
    /// status, if given, goes into the control group).
    pub fn flush(&mut self, status: Option<SensorStatus>) -> Vec<Group> {
        self.flush_holding_bulk(status, Duration::ZERO)
    }

    /// As [`Self::flush`], except that pending bulk flows are kept (to
    /// grow into a larger batch, which costs fewer bytes per flow) until
    /// the oldest of them has waited `hold`: for when earlier batches are
    /// still waiting for the link or the budget, so that sealing now would
    /// not send them sooner. Status, assets and OT-write flows are never
    /// held.
    pub fn flush_holding_bulk(
        &mut self,
        status: Option<SensorStatus>,
        hold: Duration,
    ) -> Vec<Group> {
        let mut out = Vec::new();
        if !self.assets.records.is_empty() || status.is_some() {
            out.push(Group {
                class: Priority::Control,
                assets: self.assets.take(),
                status: status.into_iter().collect(),
                ..Group::default()
            });
        }
        for class in [Priority::OtWrite, Priority::Bulk] {
            if class == Priority::Bulk && self.bulk.age() < hold {
                continue;
            }
            let flows = self.flows_mut(class).take();
            if !flows.is_empty() {
                out.push(Group {
                    class,
                    flows,
                    ..Group::default()
                });
            }
        }
        out
    }
}

/// Seals groups into batches: the next seqs, encoding, compression, and a
/// split in halves of whatever encodes larger than `max_bytes`.
pub struct Sealer {
    cfg: BatchConfig,
    seqs: SeqStore,
}

impl Sealer {
    pub fn new(cfg: BatchConfig, seqs: SeqStore) -> Self {
        Sealer { cfg, seqs }
    }

    /// Reserves the seqs of the next few batches on disk: once it succeeds,
    /// sealing one group cannot fail (see [`SeqStore::reserve`]).
    pub fn reserve_seqs(&mut self) -> Result<(), StateError> {
        // A group is at most `max_bytes` of records: a few batches at most.
        self.seqs.reserve(64)
    }

    /// The largest payload this sealer makes (when a batch can be split).
    pub fn max_bytes(&self) -> usize {
        self.cfg.max_bytes
    }

    /// `g` as one batch, or as several when it encodes larger than the
    /// limit (a single record is one batch whatever its size). Its flows
    /// go in first-seen order, whatever the layout: the columns then hold
    /// small time differences, and a batch's records keep the same order
    /// (and record indexes ashore) in either layout.
    pub fn seal(&mut self, mut g: Group) -> Result<Vec<PreparedBatch>, StateError> {
        g.flows.sort_by_key(|f| f.first_seen_us);
        let mut out = Vec::new();
        self.seal_within(g, self.cfg.max_bytes, &mut out)?;
        Ok(out)
    }

    /// The records of `b` sealed again under new seqs in batches of at most
    /// `max_bytes` each (as far as records can be split); `None` if `b`
    /// cannot be decoded.
    pub fn reseal(
        &mut self,
        b: &PreparedBatch,
        max_bytes: usize,
    ) -> Result<Option<Vec<PreparedBatch>>, StateError> {
        let Some(batch) = decode_request(&b.request) else {
            return Ok(None);
        };
        let g = Group {
            class: b.class,
            flows: batch.flows,
            assets: batch.assets,
            status: batch.status,
        };
        let mut out = Vec::new();
        self.seal_within(g, max_bytes.max(1), &mut out)?;
        Ok(Some(out))
    }

    /// Seals `g` under the next seq; when it encodes larger than `max`
    /// and has two records or more, its halves instead (the seq is then
    /// unused: seqs must increase, not be contiguous).
    fn seal_within(
        &mut self,
        g: Group,
        max: usize,
        out: &mut Vec<PreparedBatch>,
    ) -> Result<(), StateError> {
        let seq = self.seqs.allocate()?;
        let (class, flows, records) = (g.class, g.flows.len(), g.records());
        let batch = Batch {
            seq,
            sensor_id: String::new(),
            created_us: now_us(),
            flows: g.flows,
            assets: g.assets,
            status: g.status,
        };
        let request = codec::encode(
            &batch,
            self.cfg.layout,
            self.cfg.compress.then_some(self.cfg.zstd_level),
        );
        if request.payload.len() > max && records > 1 {
            let g = Group {
                class,
                flows: batch.flows,
                assets: batch.assets,
                status: batch.status,
            };
            let (first, second) = g.halves().expect("two records or more");
            self.seal_within(first, max, out)?;
            return self.seal_within(second, max, out);
        }
        out.push(PreparedBatch {
            seq,
            flows,
            class,
            request,
            sent: false,
        });
        Ok(())
    }
}

/// Decodes an upload request this sensor wrote back into its batch (`None`
/// if it is not one).
pub fn decode_request(r: &UploadRequest) -> Option<Batch> {
    codec::decode(r.encoding, &r.payload, OWN_BATCHES).ok()
}

/// What this sensor decodes again (its own batches: metrics, splits).
const OWN_BATCHES: codec::DecodeLimits = codec::DecodeLimits {
    max_decoded_bytes: 64 * 1024 * 1024,
    max_records: usize::MAX,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_never_repeats_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SeqStore::open(dir.path()).unwrap();
        let a: Vec<u64> = (0..10).map(|_| s.allocate().unwrap()).collect();
        assert!(a.windows(2).all(|w| w[1] == w[0] + 1), "{a:?}");
        drop(s); // "crash"
        let mut s = SeqStore::open(dir.path()).unwrap();
        let b = s.allocate().unwrap();
        assert!(b > a[9], "seq {b} reused after restart");
    }

    #[test]
    fn a_new_or_restored_state_starts_above_the_clock_and_a_clock_set_back_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let before = now_us() as u64;
        let first = SeqStore::open(dir.path()).unwrap().allocate().unwrap();
        assert!(first >= before, "fresh state: {first} < clock {before}");
        // A state restored from an old backup (or the first boxes' seqs
        // from 1): the counter moves up to the clock.
        fs::write(dir.path().join("seq"), "42\n").unwrap();
        let restored = SeqStore::open(dir.path()).unwrap().allocate().unwrap();
        assert!(restored >= before, "{restored}");
        // A counter ahead of the clock (the clock went back) is kept.
        let ahead = before * 2;
        fs::write(dir.path().join("seq"), format!("{ahead}\n")).unwrap();
        assert_eq!(
            SeqStore::open(dir.path()).unwrap().allocate().unwrap(),
            ahead
        );
    }

    #[test]
    fn corrupt_state_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("seq"), "banana").unwrap();
        assert!(matches!(
            SeqStore::open(dir.path()),
            Err(StateError::Corrupt { .. })
        ));
    }

    fn sealer(dir: &Path, cfg: BatchConfig) -> Sealer {
        Sealer::new(cfg, SeqStore::open(dir).unwrap())
    }

    fn seal_all(s: &mut Sealer, groups: Vec<Group>) -> Vec<PreparedBatch> {
        groups
            .into_iter()
            .flat_map(|g| s.seal(g).unwrap())
            .collect()
    }

    #[test]
    fn batcher_groups_at_max_flows_and_batches_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BatchConfig {
            max_flows: 3,
            ..BatchConfig::default()
        };
        let mut s = sealer(dir.path(), cfg.clone());
        let mut b = Batcher::new(cfg);
        let full = seal_all(&mut s, b.push(vec![FlowRecord::default(); 7], Vec::new()));
        assert_eq!(full.len(), 2);
        let mut rest = seal_all(&mut s, b.flush(None));
        assert_eq!(rest.len(), 1);
        let last = rest.pop().unwrap();
        assert_eq!(last.flows, 1);
        assert_eq!(last.class, Priority::Bulk);
        assert!(b.flush(None).is_empty());
        let seqs: Vec<u64> = full.iter().chain([&last]).map(|p| p.seq).collect();
        assert_eq!(seqs, vec![seqs[0], seqs[0] + 1, seqs[0] + 2]);
        let decoded = decode_request(&last.request).unwrap();
        assert_eq!(decoded.seq, seqs[2]);
        assert_eq!(decoded.flows.len(), 1);
    }

    #[test]
    fn groups_are_split_by_priority_class() {
        use tidewatch_proto::v1::Operation;
        let cfg = BatchConfig {
            max_flows: 2,
            ..BatchConfig::default()
        };
        let mut b = Batcher::new(cfg);
        let op = |class: OperationClass| FlowRecord {
            operations: vec![Operation {
                class: class as i32,
                ..Operation::default()
            }],
            ..FlowRecord::default()
        };
        let recs = vec![
            op(OperationClass::Read),
            op(OperationClass::Write),
            FlowRecord::default(),
            op(OperationClass::Control),
            op(OperationClass::Program),
        ];
        let full = b.push(recs, vec![AssetObservation::default()]);
        assert_eq!(
            full.iter()
                .map(|g| (g.class, g.flows.len()))
                .collect::<Vec<_>>(),
            [(Priority::Bulk, 2), (Priority::OtWrite, 2)]
        );
        let rest = b.flush(Some(SensorStatus::default()));
        assert_eq!(
            rest.iter()
                .map(|g| (g.class, g.flows.len(), g.assets.len(), g.status.len()))
                .collect::<Vec<_>>(),
            [(Priority::Control, 0, 1, 1), (Priority::OtWrite, 1, 0, 0)]
        );
    }

    #[test]
    fn bulk_flows_are_held_until_they_have_waited_long_enough() {
        use tidewatch_proto::v1::Operation;
        let mut b = Batcher::new(BatchConfig::default());
        let write = FlowRecord {
            operations: vec![Operation {
                class: OperationClass::Write as i32,
                ..Operation::default()
            }],
            ..FlowRecord::default()
        };
        b.push(
            vec![FlowRecord::default(), write],
            vec![AssetObservation::default()],
        );
        let hold = Duration::from_millis(300);
        // Held: status, assets and the OT write go, the bulk flow waits.
        let now = b.flush_holding_bulk(Some(SensorStatus::default()), hold);
        assert_eq!(
            now.iter()
                .map(|g| (g.class, g.flows.len(), g.assets.len(), g.status.len()))
                .collect::<Vec<_>>(),
            [(Priority::Control, 0, 1, 1), (Priority::OtWrite, 1, 0, 0)]
        );
        assert!(b.flush_holding_bulk(None, hold).is_empty());
        std::thread::sleep(hold);
        let later = b.flush_holding_bulk(None, hold);
        assert_eq!(later.len(), 1);
        assert_eq!((later[0].class, later[0].flows.len()), (Priority::Bulk, 1));
        // A full group is sealed whatever its age.
        let cfg = BatchConfig {
            max_flows: 2,
            ..BatchConfig::default()
        };
        let mut b = Batcher::new(cfg);
        assert_eq!(b.push(vec![FlowRecord::default(); 2], Vec::new()).len(), 1);
    }

    /// A flow as large as a hostile network can make one: 16 distinct,
    /// random-looking DNS names of ~120 bytes (they do not compress).
    fn fat_flow(i: u64) -> FlowRecord {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let indicators = (0..16)
            .map(|_| {
                (0..120)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (b'a' + (x % 26) as u8) as char
                    })
                    .collect()
            })
            .collect();
        FlowRecord {
            app_protocol: "dns".into(),
            indicators,
            ..FlowRecord::default()
        }
    }

    #[test]
    fn full_batches_of_the_largest_flows_stay_under_the_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BatchConfig::default();
        let mut s = sealer(dir.path(), cfg.clone());
        let mut b = Batcher::new(cfg.clone());
        let mut batches = seal_all(
            &mut s,
            b.push((0..4000).map(fat_flow).collect(), Vec::new()),
        );
        batches.extend(seal_all(&mut s, b.flush(None)));
        let flows: usize = batches.iter().map(|b| b.flows).sum();
        assert_eq!(flows, 4000);
        assert!(batches.len() > 4000 / cfg.max_flows, "grouped by size too");
        for b in &batches {
            assert!(
                b.request.payload.len() <= cfg.max_bytes,
                "batch {} of {} bytes",
                b.seq,
                b.request.payload.len()
            );
        }
        // Without the byte limit, a group of max_flows such flows would be
        // over the collector's default limit of 1,000,000 bytes.
        let big = Group {
            class: Priority::Bulk,
            flows: (0..cfg.max_flows as u64).map(fat_flow).collect(),
            ..Group::default()
        };
        let unsplit = codec::encode(
            &Batch {
                flows: big.flows.clone(),
                ..Batch::default()
            },
            codec::Layout::Protobuf,
            Some(cfg.zstd_level),
        );
        assert!(unsplit.payload.len() > 1_000_000);
        // And a sealer splits such a group by itself.
        let parts = s.seal(big).unwrap();
        assert!(parts.len() > 1);
        assert!(parts
            .iter()
            .all(|p| p.request.payload.len() <= cfg.max_bytes));
        assert_eq!(parts.iter().map(|p| p.flows).sum::<usize>(), cfg.max_flows);
    }

    #[test]
    fn reseal_splits_a_batch_under_new_increasing_seqs_keeping_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sealer(dir.path(), BatchConfig::default());
        let flows: Vec<FlowRecord> = (0..100).map(fat_flow).collect();
        let b = s
            .seal(Group {
                class: Priority::OtWrite,
                flows: flows.clone(),
                ..Group::default()
            })
            .unwrap()
            .pop()
            .unwrap();
        let parts = s.reseal(&b, b.request.payload.len() / 2).unwrap().unwrap();
        assert!(parts.len() >= 2);
        let mut seq = b.seq;
        let mut back = Vec::new();
        for p in &parts {
            assert!(p.seq > seq && p.class == Priority::OtWrite);
            assert!(p.request.payload.len() <= b.request.payload.len() / 2);
            seq = p.seq;
            let d = decode_request(&p.request).unwrap();
            assert_eq!(d.seq, p.seq);
            back.extend(d.flows);
        }
        assert_eq!(back, flows);
        // A single record cannot be split; a payload that is not a batch
        // cannot be resealed.
        let one = s
            .seal(Group {
                class: Priority::Bulk,
                flows: vec![fat_flow(1)],
                ..Group::default()
            })
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(s.reseal(&one, 10).unwrap().unwrap().len(), 1);
        let mut junk = one.clone();
        junk.request.payload = vec![0xff; 10];
        assert!(s.reseal(&junk, 10).unwrap().is_none());
    }

    #[test]
    fn halves_keep_every_record_once() {
        let st = SensorStatus::default();
        let a = AssetObservation::default();
        for (flows, assets, status) in [
            (2, 0, 0),
            (5, 0, 1),
            (1, 0, 1),
            (0, 1, 1),
            (0, 3, 1),
            (1, 1, 0),
            (0, 0, 2),
        ] {
            let g = Group {
                class: Priority::Control,
                flows: vec![FlowRecord::default(); flows],
                assets: vec![a.clone(); assets],
                status: vec![st.clone(); status],
            };
            let (x, y) = g.halves().unwrap();
            assert!(
                x.records() > 0 && y.records() > 0,
                "{flows} {assets} {status}"
            );
            assert_eq!(
                (
                    x.flows.len() + y.flows.len(),
                    x.assets.len() + y.assets.len(),
                    x.status.len() + y.status.len()
                ),
                (flows, assets, status)
            );
        }
        assert!(Group::default().halves().is_none());
    }
}
