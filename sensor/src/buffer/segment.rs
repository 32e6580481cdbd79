//! Segment files: their names, the listing of a buffer directory in seq
//! order, and the scan that validates every record of one (on open and for
//! the offline tools).

use std::fs;
use std::path::{Path, PathBuf};

use super::record::{self, Check, MAGIC, RECORD_HEADER, SEGMENT_HEADER};
use super::{io_err, BufferError};

#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub last_seq: u64,
    pub path: PathBuf,
    pub bytes: u64,
    /// (seq, flows) of every valid record, in order.
    pub records: Vec<(u64, u32)>,
}

pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.twb")
}

pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, BufferError> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|r| r.strip_suffix(".twb"))
        {
            if let Ok(first) = n.parse::<u64>() {
                v.push((first, e.path()));
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Result of scanning one segment file.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub records: Vec<(u64, u32, u64)>, // seq, flows, offset
    pub corrupt: u64,
    /// Offset after the last valid record (where a torn tail starts).
    pub valid_end: u64,
    pub len: u64,
    pub bad_header: bool,
}

/// Reads every record of a segment, skipping corrupt ones: after a bad
/// length or CRC it resynchronises on the next offset where a record with a
/// valid CRC starts.
pub fn scan(path: &Path) -> Result<ScanReport, BufferError> {
    let data = fs::read(path).map_err(io_err(path))?;
    let mut rep = ScanReport {
        len: data.len() as u64,
        ..ScanReport::default()
    };
    if data.len() < SEGMENT_HEADER || &data[..SEGMENT_HEADER] != MAGIC {
        rep.bad_header = true;
        return Ok(rep);
    }
    let mut at = SEGMENT_HEADER;
    rep.valid_end = at as u64;
    let mut in_garbage = false;
    while at + RECORD_HEADER <= data.len() {
        if let Check::Valid(n) = record::check(&data[at..]) {
            let (seq, flows) = record::seq_and_flows(&data[at..at + n]);
            rep.records.push((seq, flows, at as u64));
            at += n;
            rep.valid_end = at as u64;
            in_garbage = false;
        } else {
            if !in_garbage {
                rep.corrupt += 1;
                in_garbage = true;
            }
            at += 1;
        }
    }
    if at < data.len() && !in_garbage && rep.valid_end < data.len() as u64 {
        // A few bytes of a header that never completed: a torn write.
        rep.corrupt += 1;
    }
    Ok(rep)
}
