//! Streams a class's stored batches from disk to the uplink in bounded
//! memory, one record at a time, resynchronising after a damaged record.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::record::{self, Check, RECORD_HEADER, SEGMENT_HEADER};
use super::segment::{list_segments, segment_name};
use super::writer::Handover;
use super::{io_err, BufferError, Stored};

/// Streams stored batches from disk in bounded memory (one record at a
/// time). Segments deleted meanwhile (acked or dropped) are skipped.
pub struct Reader {
    dir: PathBuf,
    after: u64,
    current: Option<(u64, BufReader<File>)>,
    handover: Arc<Mutex<Handover>>,
}

impl Reader {
    pub(crate) fn new(dir: PathBuf, after: u64, handover: Arc<Mutex<Handover>>) -> Reader {
        Reader {
            dir,
            after,
            current: None,
            handover,
        }
    }

    /// The next stored batch after the last one returned, or `None` if the
    /// reader has caught up with what is on disk now.
    pub fn next_batch(&mut self) -> Result<Option<Stored>, BufferError> {
        loop {
            if self.current.is_none() {
                // The segment holding `after + 1`: the last one starting at or
                // before it, else the first one after it.
                let segs = list_segments(&self.dir)?;
                let pick = segs
                    .iter()
                    .rev()
                    .find(|(first, _)| *first <= self.after + 1)
                    .or_else(|| segs.iter().find(|(first, _)| *first > self.after));
                let Some((first, path)) = pick else {
                    return Ok(None);
                };
                let f = match File::open(path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(path)(e)),
                };
                let mut r = BufReader::with_capacity(64 * 1024, f);
                r.seek(SeekFrom::Start(SEGMENT_HEADER as u64))
                    .map_err(io_err(path))?;
                self.current = Some((*first, r));
            }
            let (first, r) = self.current.as_mut().expect("set above");
            let first = *first;
            match read_record(r) {
                Ok(Some(s)) if s.seq > self.after => {
                    self.after = s.seq;
                    // Skip what the cap dropped while this reader still had
                    // the (now deleted) segment open; claim the rest.
                    let mut h = self.handover.lock().expect("handover lock");
                    if s.seq <= h.floor {
                        continue;
                    }
                    h.handed = h.handed.max(s.seq);
                    return Ok(Some(s));
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    if !self.advance(first)? {
                        return Ok(None);
                    }
                }
                Err(_) => {
                    // A corrupt record in the middle of a segment (the open
                    // scan counted it): resume at the next valid record.
                    let path = self.dir.join(segment_name(first));
                    if !resync(r).map_err(io_err(&path))? && !self.advance(first)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Moves to the segment after the one starting at `first`, if there is
    /// one. Seqs need not be contiguous (a restart skips a reserved block).
    fn advance(&mut self, first: u64) -> Result<bool, BufferError> {
        let next = list_segments(&self.dir)?
            .into_iter()
            .map(|(f, _)| f)
            .find(|f| *f > first);
        match next {
            Some(n) => {
                self.after = self.after.max(n - 1);
                self.current = None;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// After a corrupt record at the reader's position, moves to the next
/// offset where a record with a valid length and CRC starts. Returns false
/// if there is none in the rest of the segment. Reads the rest of the
/// segment (bounded by the segment size) only in this rare case.
fn resync(r: &mut BufReader<File>) -> io::Result<bool> {
    let start = r.stream_position()?;
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)?;
    for i in 1..rest.len().saturating_sub(RECORD_HEADER) {
        if let Check::Valid(_) = record::check(&rest[i..]) {
            r.seek(SeekFrom::Start(start + i as u64))?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads one record at the reader's position; `Ok(None)` at a clean or
/// incomplete end (more may be appended later), `Err` on corruption (the
/// position stays at the damaged record, for [`resync`]).
pub(crate) fn read_record(r: &mut BufReader<File>) -> io::Result<Option<Stored>> {
    let start = r.stream_position()?;
    let mut rec = vec![0u8; RECORD_HEADER];
    let mut have = 0;
    loop {
        if let Err(e) = r.read_exact(&mut rec[have..]) {
            r.seek(SeekFrom::Start(start))?;
            return if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(None)
            } else {
                Err(e)
            };
        }
        have = rec.len();
        match record::check(&rec) {
            Check::Valid(_) => return Ok(Some(record::decode(&rec))),
            Check::Incomplete(need) => rec.resize(need, 0),
            Check::Corrupt => {
                r.seek(SeekFrom::Start(start))?;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "damaged record (length or CRC)",
                ));
            }
        }
    }
}
