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
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
pub use tidewatch_proto::util::now_us;
use tidewatch_proto::v1::{
    AssetObservation, Batch, Encoding, FlowRecord, SensorStatus, UploadRequest,
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
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(io)?;
        writeln!(f, "{value}").map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

/// A batch ready to go on the wire, kept until the collector acks it.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    pub seq: u64,
    pub flows: usize,
    pub request: UploadRequest,
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

/// Groups records into batches of at most `max_flows` records (flows and
/// asset observations together).
pub struct Batcher {
    cfg: BatchConfig,
    seqs: SeqStore,
    pending: Vec<FlowRecord>,
    pending_assets: Vec<AssetObservation>,
}

impl Batcher {
    pub fn new(cfg: BatchConfig, seqs: SeqStore) -> Self {
        Batcher {
            cfg,
            seqs,
            pending: Vec::new(),
            pending_assets: Vec::new(),
        }
    }

    /// Adds records; returns the batches that became full. Asset
    /// observations go first: they are few and analysts want them early.
    pub fn push(
        &mut self,
        records: Vec<FlowRecord>,
        assets: Vec<AssetObservation>,
    ) -> Result<Vec<PreparedBatch>, StateError> {
        self.pending.extend(records);
        self.pending_assets.extend(assets);
        let max = self.cfg.max_flows.max(1);
        let mut out = Vec::new();
        while self.pending.len() + self.pending_assets.len() >= max {
            let n_assets = self.pending_assets.len().min(max);
            let rest_assets = self.pending_assets.split_off(n_assets);
            let assets = std::mem::replace(&mut self.pending_assets, rest_assets);
            let n_flows = (max - n_assets).min(self.pending.len());
            let rest = self.pending.split_off(n_flows);
            let flows = std::mem::replace(&mut self.pending, rest);
            out.push(self.seal(flows, assets, Vec::new())?);
        }
        Ok(out)
    }

    /// Seals what is pending (if anything, or if a status is given).
    pub fn flush(
        &mut self,
        status: Option<SensorStatus>,
    ) -> Result<Option<PreparedBatch>, StateError> {
        if self.pending.is_empty() && self.pending_assets.is_empty() && status.is_none() {
            return Ok(None);
        }
        let flows = std::mem::take(&mut self.pending);
        let assets = std::mem::take(&mut self.pending_assets);
        Ok(Some(self.seal(
            flows,
            assets,
            status.into_iter().collect(),
        )?))
    }

    fn seal(
        &mut self,
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
            request: encode_request(&batch, self.cfg.compress, self.cfg.zstd_level),
        })
    }
}

/// Decodes an upload request's payload back into its batch (`None` if it
/// is not one this sensor wrote).
pub fn decode_request(r: &UploadRequest) -> Option<Batch> {
    match Encoding::try_from(r.encoding).ok()? {
        Encoding::Protobuf => Batch::decode(&r.payload[..]).ok(),
        Encoding::ProtobufZstd => {
            let raw = zstd::bulk::decompress(&r.payload, 64 * 1024 * 1024).ok()?;
            Batch::decode(&raw[..]).ok()
        }
        Encoding::Unspecified => None,
    }
}

/// Encodes a batch as an upload request (optionally zstd-compressed).
pub fn encode_request(batch: &Batch, compress: bool, level: i32) -> UploadRequest {
    let raw = batch.encode_to_vec();
    let (encoding, payload) = if compress {
        match zstd::bulk::compress(&raw, level) {
            Ok(z) => (Encoding::ProtobufZstd, z),
            Err(_) => (Encoding::Protobuf, raw),
        }
    } else {
        (Encoding::Protobuf, raw)
    };
    UploadRequest {
        seq: batch.seq,
        encoding: encoding as i32,
        payload,
    }
}

#[cfg(test)]
mod tests {
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
        let last = b.flush(None).unwrap().unwrap();
        assert_eq!(last.flows, 1);
        assert!(b.flush(None).unwrap().is_none());
        let seqs: Vec<u64> = full.iter().chain([&last]).map(|p| p.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let raw = zstd::bulk::decompress(&last.request.payload, 1 << 20).unwrap();
        let decoded = Batch::decode(&raw[..]).unwrap();
        assert_eq!(decoded.seq, 3);
        assert_eq!(decoded.flows.len(), 1);
    }
}
