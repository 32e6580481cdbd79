//! Batching: flow records -> `Batch` with a sensor-chosen, strictly increasing
//! `seq` -> encoded `UploadRequest`.
//!
//! `seq` must never repeat over the sensor's life, across restarts too: the
//! shore treats a repeated (sensor, seq) as a duplicate and drops it. The
//! counter is therefore persisted in `STATE_DIR/seq` and reserved in blocks
//! (written, fsynced and renamed into place before any seq of the block is
//! used); a crash skips at most the rest of one block, which is harmless since
//! seqs need to increase, not to be contiguous.

use std::fs;
use std::path::{Path, PathBuf};

use tidewatch_proto::codec;

use crate::state_file::{self, Durability};
pub use tidewatch_proto::util::now_us;
use tidewatch_proto::v1::{
    AssetObservation, Batch, FlowRecord, OperationClass, SensorStatus, UploadRequest,
};

const SEQ_BLOCK: u64 = 4096;

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
/// maximum (1 MiB by default, in line with Kafka's default message size).
#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub max_flows: usize,
    pub compress: bool,
    pub zstd_level: i32,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_flows: 2000,
            compress: true,
            zstd_level: 3,
        }
    }
}

/// Groups records into batches of one [`Priority`] each, of at most
/// `max_flows` records: asset observations (and status) in `Control`
/// batches, flows in `OtWrite` or `Bulk` batches by their operations.
pub struct Batcher {
    cfg: BatchConfig,
    seqs: SeqStore,
    assets: Vec<AssetObservation>,
    ot: Vec<FlowRecord>,
    bulk: Vec<FlowRecord>,
}

impl Batcher {
    pub fn new(cfg: BatchConfig, seqs: SeqStore) -> Self {
        Batcher {
            cfg,
            seqs,
            assets: Vec::new(),
            ot: Vec::new(),
            bulk: Vec::new(),
        }
    }

    /// Adds records; returns the batches that became full.
    pub fn push(
        &mut self,
        records: Vec<FlowRecord>,
        assets: Vec<AssetObservation>,
    ) -> Result<Vec<PreparedBatch>, StateError> {
        for r in records {
            match Priority::of_flow(&r) {
                Priority::OtWrite => self.ot.push(r),
                _ => self.bulk.push(r),
            }
        }
        self.assets.extend(assets);
        let max = self.cfg.max_flows.max(1);
        let mut out = Vec::new();
        while self.assets.len() >= max {
            let rest = self.assets.split_off(max);
            let a = std::mem::replace(&mut self.assets, rest);
            out.push(self.seal(Priority::Control, Vec::new(), a, Vec::new())?);
        }
        for class in [Priority::OtWrite, Priority::Bulk] {
            while self.flows_mut(class).len() >= max {
                let pending = self.flows_mut(class);
                let rest = pending.split_off(max);
                let f = std::mem::replace(pending, rest);
                out.push(self.seal(class, f, Vec::new(), Vec::new())?);
            }
        }
        Ok(out)
    }

    fn flows_mut(&mut self, class: Priority) -> &mut Vec<FlowRecord> {
        match class {
            Priority::OtWrite => &mut self.ot,
            _ => &mut self.bulk,
        }
    }

    /// Seals everything pending (one batch per class with records; the
    /// status, if given, goes into the control batch).
    pub fn flush(
        &mut self,
        status: Option<SensorStatus>,
    ) -> Result<Vec<PreparedBatch>, StateError> {
        let mut out = Vec::new();
        if !self.assets.is_empty() || status.is_some() {
            let a = std::mem::take(&mut self.assets);
            out.push(self.seal(
                Priority::Control,
                Vec::new(),
                a,
                status.into_iter().collect(),
            )?);
        }
        for class in [Priority::OtWrite, Priority::Bulk] {
            let f = std::mem::take(self.flows_mut(class));
            if !f.is_empty() {
                out.push(self.seal(class, f, Vec::new(), Vec::new())?);
            }
        }
        Ok(out)
    }

    fn seal(
        &mut self,
        class: Priority,
        flows: Vec<FlowRecord>,
        assets: Vec<AssetObservation>,
        status: Vec<SensorStatus>,
    ) -> Result<PreparedBatch, StateError> {
        let seq = self.seqs.allocate()?;
        let n = flows.len();
        let batch = Batch {
            seq,
            sensor_id: String::new(),
            created_us: now_us(),
            flows,
            assets,
            status,
        };
        Ok(PreparedBatch {
            seq,
            flows: n,
            class,
            request: codec::encode(&batch, self.cfg.compress.then_some(self.cfg.zstd_level)),
            sent: false,
        })
    }
}

/// Decodes an upload request this sensor wrote back into its batch (`None`
/// if it is not one).
pub fn decode_request(r: &UploadRequest) -> Option<Batch> {
    codec::decode(r.encoding, &r.payload, MAX_DECODED_BYTES).ok()
}

/// Largest batch this sensor decodes again (its own, for metrics).
const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn seq_never_repeats_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SeqStore::open(dir.path()).unwrap();
        let a: Vec<u64> = (0..10).map(|_| s.allocate().unwrap()).collect();
        assert_eq!(a, (1..=10).collect::<Vec<_>>());
        drop(s); // "crash"
        let mut s = SeqStore::open(dir.path()).unwrap();
        let b = s.allocate().unwrap();
        assert!(b > 10, "seq {b} reused after restart");
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

    #[test]
    fn batcher_splits_at_max_flows_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BatchConfig {
            max_flows: 3,
            ..BatchConfig::default()
        };
        let mut b = Batcher::new(cfg, SeqStore::open(dir.path()).unwrap());
        let recs = vec![FlowRecord::default(); 7];
        let full = b.push(recs, Vec::new()).unwrap();
        assert_eq!(full.len(), 2);
        let mut rest = b.flush(None).unwrap();
        assert_eq!(rest.len(), 1);
        let last = rest.pop().unwrap();
        assert_eq!(last.flows, 1);
        assert_eq!(last.class, Priority::Bulk);
        assert!(b.flush(None).unwrap().is_empty());
        let seqs: Vec<u64> = full.iter().chain([&last]).map(|p| p.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let raw = zstd::bulk::decompress(&last.request.payload, 1 << 20).unwrap();
        let decoded = Batch::decode(&raw[..]).unwrap();
        assert_eq!(decoded.seq, 3);
        assert_eq!(decoded.flows.len(), 1);
    }

    #[test]
    fn batches_are_split_by_priority_class() {
        use tidewatch_proto::v1::Operation;
        let dir = tempfile::tempdir().unwrap();
        let cfg = BatchConfig {
            max_flows: 2,
            ..BatchConfig::default()
        };
        let mut b = Batcher::new(cfg, SeqStore::open(dir.path()).unwrap());
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
        let full = b.push(recs, vec![AssetObservation::default()]).unwrap();
        assert_eq!(
            full.iter().map(|p| (p.class, p.flows)).collect::<Vec<_>>(),
            [(Priority::OtWrite, 2), (Priority::Bulk, 2)]
        );
        let rest = b.flush(Some(SensorStatus::default())).unwrap();
        assert_eq!(
            rest.iter().map(|p| (p.class, p.flows)).collect::<Vec<_>>(),
            [(Priority::Control, 0), (Priority::OtWrite, 1)]
        );
        let control = decode_request(&rest[0].request).unwrap();
        assert_eq!((control.assets.len(), control.status.len()), (1, 1));
    }
}
