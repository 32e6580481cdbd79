//! The offline tools behind `tidewatch-sensor buffer`: `inspect` reads a
//! stopped sensor's buffer without changing it, `repair` rewrites damaged
//! segments with their valid records only.

use std::fs;
use std::path::{Path, PathBuf};

use super::record::{self, Check, MAGIC, SEGMENT_HEADER};
use super::segment::{list_segments, scan};
use super::{io_err, BufferError};
use tidewatch_proto::state_file::{self, Durability};

/// One segment as `inspect` sees it.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub flows: u64,
    pub pending_records: u64,
    pub corrupt: u64,
    pub torn_tail_bytes: u64,
    pub bad_header: bool,
}

/// The whole buffer, read only.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    pub acked: u64,
    pub segments: Vec<SegmentReport>,
}

impl Inspection {
    pub fn corrupt(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.corrupt + s.bad_header as u64)
            .sum()
    }
}

/// Reads every segment without changing anything (`buffer check|stats`).
pub fn inspect(dir: &Path) -> Result<Inspection, BufferError> {
    if !dir.is_dir() {
        return Err(BufferError::Config(format!(
            "no buffer at {}",
            dir.display()
        )));
    }
    let acked = match fs::read_to_string(dir.join("acked")) {
        Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
        Err(_) => 0,
    };
    let mut out = Inspection {
        acked,
        segments: Vec::new(),
    };
    for (_, path) in list_segments(dir)? {
        let rep = scan(&path)?;
        out.segments.push(SegmentReport {
            bytes: rep.len,
            records: rep.records.len() as u64,
            first_seq: rep.records.first().map(|r| r.0),
            last_seq: rep.records.last().map(|r| r.0),
            flows: rep.records.iter().map(|r| r.1 as u64).sum(),
            pending_records: rep.records.iter().filter(|r| r.0 > acked).count() as u64,
            corrupt: rep.corrupt,
            torn_tail_bytes: rep
                .len
                .saturating_sub(rep.valid_end.max(SEGMENT_HEADER as u64)),
            bad_header: rep.bad_header,
            path,
        });
    }
    Ok(out)
}

/// Rewrites damaged segments with their valid records only and removes
/// unreadable ones (`buffer repair`). Returns the records removed.
pub fn repair(dir: &Path) -> Result<u64, BufferError> {
    let mut removed = 0;
    for (_, path) in list_segments(dir)? {
        let rep = scan(&path)?;
        if rep.bad_header {
            fs::remove_file(&path).map_err(io_err(&path))?;
            removed += 1;
            continue;
        }
        if rep.corrupt == 0 && rep.valid_end == rep.len {
            continue;
        }
        let data = fs::read(&path).map_err(io_err(&path))?;
        let mut out = MAGIC.to_vec();
        for (_, _, off) in &rep.records {
            let off = *off as usize;
            if let Check::Valid(n) = record::check(&data[off..]) {
                out.extend_from_slice(&data[off..off + n]);
            }
        }
        // Synced: the damaged original is gone once this returns.
        state_file::replace(&path, &out, Durability::Synced).map_err(io_err(&path))?;
        removed += rep.corrupt;
    }
    Ok(removed)
}
