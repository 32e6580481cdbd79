//! The ship-side disk buffer: every batch is appended here before upload and
//! stays until the collector has acked it (an ack means "in Kafka"), so a
//! link cut, a crash or a power loss loses nothing that was written.
//!
//! Layout of the buffer directory:
//! - `seg-<first seq, 20 digits>.twb`: append-only segment files of records,
//!   one batch each (format in [`record`]).
//! - `acked`: the highest seq acked by the collector (written atomically).
//!
//! Beside the classes' directories, `set-aside/` holds the batches taken out
//! of the queue because the collector refused them for good, and the
//! journals of batches split into smaller ones ([`set_aside`]).
//!
//! Durability is chosen with [`Fsync`]: after every batch (nothing acked by
//! the sensor's own flow table is lost on power failure, at one fsync per
//! batch), on an interval (the default: at most that much data lost on power
//! failure, little I/O), or never (the OS decides). A torn or corrupt record
//! is detected by its length or CRC on open, skipped and counted, and
//! everything before and after it is kept. The size cap holds down to a few
//! MiB: when full, the oldest segment is dropped (or new batches are
//! refused, per [`WhenFull`]) and every dropped batch is counted, so the
//! shore sees the gap in `SensorStatus`.
//!
//! The parts: [`record`] (the on-disk format and its one check),
//! [`segment`] (segment files: names, listing, the validating scan),
//! [`DiskBuffer`] (the live buffer: append, ack cursor, size cap;
//! `writer.rs`), [`Reader`] (streams stored batches to the uplink;
//! `reader.rs`), [`inspect`]/[`repair`] (the offline tools behind
//! `tidewatch-sensor buffer`; `offline.rs`) and [`ClassedBuffer`] (one
//! buffer per upload class under one cap).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tidewatch_proto::v1::UploadRequest;

use crate::batch::{PreparedBatch, Priority};

pub mod classed;
mod offline;
mod reader;
pub mod record;
pub mod segment;
pub mod set_aside;
mod writer;

pub use classed::{ClassedBuffer, RetryReport, SealError};
pub use offline::{inspect, repair, Inspection, SegmentReport};
pub use reader::Reader;
pub use set_aside::SetAsideStats;
pub use writer::{DiskBuffer, OpenReport};

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid buffer configuration: {0}")]
    Config(String),
}

impl BufferError {
    /// The filesystem (or the quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, BufferError::Io { source, .. } if tidewatch_proto::state_file::is_disk_full(source))
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BufferError + '_ {
    move |source| BufferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// When appended data is forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fsync {
    EveryBatch,
    Interval(Duration),
    Never,
}

/// What to do when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    DropOldest,
    DropNewest,
}

#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub fsync: Fsync,
    pub when_full: WhenFull,
}

impl BufferConfig {
    /// Segment size: an eighth of the cap, between 64 KiB and 64 MiB.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).clamp(64 * 1024, 64 * 1024 * 1024)
    }
}

/// Counters of the buffer (reported in `SensorStatus`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BufferStats {
    /// Bytes on disk in segments.
    pub bytes: u64,
    /// Batches not yet acked.
    pub pending_batches: u64,
    /// Flows in batches not yet acked.
    pub pending_flows: u64,
    /// Batches dropped because the buffer was full.
    pub dropped_batches: u64,
    /// Flows in those batches.
    pub dropped_flows: u64,
    /// Records found corrupt (torn writes, bad CRC) and skipped.
    pub corrupt_records: u64,
}

/// One stored batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub seq: u64,
    pub flows: u32,
    pub request: UploadRequest,
}

impl Stored {
    pub fn into_prepared(self, class: Priority) -> PreparedBatch {
        PreparedBatch {
            seq: self.seq,
            flows: self.flows as usize,
            class,
            request: self.request,
            sent: false,
        }
    }
}
