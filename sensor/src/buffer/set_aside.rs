//! Batches set aside: what the collector refused for good (or what cannot
//! go over the link at all) leaves the upload queue for
//! `STATE_DIR/buffer/set-aside/`, so that one bad batch never blocks the
//! ones behind it, and stays there, counted and reported in `SensorStatus`
//! with its reason, until an operator retries it (`tidewatch-sensor buffer
//! set-aside retry`, which seals its records again under the current
//! limits) or deletes it.
//!
//! The same directory holds the journal of a split: before a batch is
//! replaced in the queue by smaller ones (new seqs), they are written here
//! (synced), and the file is removed once they are in the buffer. A crash
//! in between finds the journal on the next open and completes the split
//! (see [`super::ClassedBuffer::open`]), so the records go up exactly once.
//!
//! Files are named `<class>-<seq, 20 digits>.batch` (set aside) and
//! `<class>-<seq>.split` (a split journal, named by the batch it replaces).
//! Each holds a line with the reason, then buffer records (format in
//! [`super::record`]): one for a set-aside batch, the replacements for a
//! journal.

use std::fs;
use std::path::{Path, PathBuf};

use super::record::{self, Check};
use super::{io_err, BufferError, Stored};
use crate::batch::{PreparedBatch, Priority};
use tidewatch_proto::state_file::{self, Durability};

/// Extension of a set-aside batch.
const SET_ASIDE: &str = "batch";
/// Extension of a split journal.
const SPLIT: &str = "split";
/// Longest reason kept (the rest is cut).
const MAX_REASON: usize = 500;

/// One file of the set-aside directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub class: Priority,
    /// The seq of the batch set aside, or of the batch a journal replaces.
    pub seq: u64,
    pub reason: String,
    pub batches: Vec<Stored>,
}

impl Entry {
    pub fn flows(&self) -> u64 {
        self.batches.iter().map(|b| b.flows as u64).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.batches
            .iter()
            .map(|b| b.request.payload.len() as u64)
            .sum()
    }
}

/// What is set aside now (reported in `SensorStatus` and metrics).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SetAsideStats {
    pub batches: u64,
    pub flows: u64,
    /// The reason of the latest batch set aside.
    pub last_reason: String,
}

/// The set-aside directory of one buffer.
pub struct SetAside {
    dir: PathBuf,
    stats: SetAsideStats,
}

impl SetAside {
    /// Opens (or creates) `dir`, counting what is set aside there.
    pub fn open(dir: PathBuf) -> Result<SetAside, BufferError> {
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut stats = SetAsideStats::default();
        for e in entries(&dir)?.into_iter().filter(|e| !e.is_split()) {
            stats.batches += 1;
            stats.flows += e.flows();
            stats.last_reason = e.reason;
        }
        Ok(SetAside { dir, stats })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> &SetAsideStats {
        &self.stats
    }

    /// Sets `b` aside with `reason` (synced before returning).
    pub fn put(&mut self, b: &PreparedBatch, reason: &str) -> Result<(), BufferError> {
        let path = self.dir.join(file_name(b.class, b.seq, SET_ASIDE));
        write(&path, reason, std::slice::from_ref(b))?;
        self.stats.batches += 1;
        self.stats.flows += b.flows as u64;
        self.stats.last_reason = clean(reason);
        Ok(())
    }

    /// Journals that the batch `seq` of `class` is replaced by
    /// `replacements` (synced before returning); returns the journal.
    pub fn begin_split(
        &self,
        class: Priority,
        seq: u64,
        reason: &str,
        replacements: &[PreparedBatch],
    ) -> Result<PathBuf, BufferError> {
        let path = self.dir.join(file_name(class, seq, SPLIT));
        write(&path, reason, replacements)?;
        Ok(path)
    }

    /// Removes a journal or a set-aside batch (one that went back into the
    /// queue or was deleted), and forgets it in the counts.
    pub fn remove(&mut self, e: &Entry) -> Result<(), BufferError> {
        match fs::remove_file(&e.path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(io_err(&e.path)(err)),
        }
        if !e.is_split() {
            self.stats.batches = self.stats.batches.saturating_sub(1);
            self.stats.flows = self.stats.flows.saturating_sub(e.flows());
        }
        Ok(())
    }
}

impl Entry {
    /// A split journal (not a batch set aside).
    pub fn is_split(&self) -> bool {
        self.path.extension().is_some_and(|x| x == SPLIT)
    }
}

fn file_name(class: Priority, seq: u64, ext: &str) -> String {
    format!("{}-{seq:020}.{ext}", class.name())
}

/// One line, at most [`MAX_REASON`] bytes.
fn clean(reason: &str) -> String {
    let mut r: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if r.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r.truncate(cut);
    }
    r
}

fn write(path: &Path, reason: &str, batches: &[PreparedBatch]) -> Result<(), BufferError> {
    let mut content = clean(reason).into_bytes();
    content.push(b'\n');
    for b in batches {
        content.extend_from_slice(&record::encode(b));
    }
    state_file::replace(path, &content, Durability::Synced).map_err(io_err(path))
}

/// Every file of the set-aside directory `dir`, journals first, then by
/// class and seq. A file that cannot be read whole is an error (nothing is
/// guessed about a batch that may be the only copy).
pub fn entries(dir: &Path) -> Result<Vec<Entry>, BufferError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for de in rd {
        let path = de.map_err(io_err(dir))?.path();
        let Some((class, seq)) = parse_name(&path) else {
            continue;
        };
        let data = fs::read(&path).map_err(io_err(&path))?;
        let bad = |what: &str| BufferError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()),
        };
        let nl = data
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("no reason line"))?;
        let reason = String::from_utf8_lossy(&data[..nl]).into_owned();
        let mut rest = &data[nl + 1..];
        let mut batches = Vec::new();
        while !rest.is_empty() {
            match record::check(rest) {
                Check::Valid(n) => {
                    batches.push(record::decode(&rest[..n]));
                    rest = &rest[n..];
                }
                _ => return Err(bad("damaged record")),
            }
        }
        out.push(Entry {
            path,
            class,
            seq,
            reason,
            batches,
        });
    }
    out.sort_by_key(|e| (!e.is_split(), e.class, e.seq));
    Ok(out)
}

/// (class, seq) of a set-aside file name; `None` for other files.
fn parse_name(path: &Path) -> Option<(Priority, u64)> {
    let ext = path.extension()?.to_str()?;
    if ext != SET_ASIDE && ext != SPLIT {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let (class, seq) = stem.rsplit_once('-')?;
    let class = Priority::ALL.into_iter().find(|c| c.name() == class)?;
    Some((class, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewatch_proto::v1::UploadRequest;

    fn batch(seq: u64, class: Priority) -> PreparedBatch {
        PreparedBatch {
            seq,
            flows: 2,
            class,
            sent: true,
            request: UploadRequest {
                seq,
                encoding: 1,
                payload: vec![seq as u8; 40],
            },
        }
    }

    #[test]
    fn set_aside_batches_and_journals_round_trip_and_are_counted() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SetAside::open(d.path().join("set-aside")).unwrap();
        s.put(&batch(7, Priority::OtWrite), "too large:\nline two")
            .unwrap();
        s.put(&batch(3, Priority::Bulk), "malformed").unwrap();
        s.begin_split(
            Priority::Bulk,
            9,
            "too large",
            &[batch(10, Priority::Bulk), batch(11, Priority::Bulk)],
        )
        .unwrap();
        assert_eq!(
            s.stats(),
            &SetAsideStats {
                batches: 2,
                flows: 4,
                last_reason: "malformed".into()
            }
        );
        let reopened = SetAside::open(s.dir().to_path_buf()).unwrap();
        assert_eq!((reopened.stats().batches, reopened.stats().flows), (2, 4));
        let e = entries(s.dir()).unwrap();
        let got: Vec<_> = e
            .iter()
            .map(|e| {
                (
                    e.is_split(),
                    e.class,
                    e.seq,
                    e.batches.len(),
                    e.reason.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (true, Priority::Bulk, 9, 2, "too large"),
                (false, Priority::OtWrite, 7, 1, "too large: line two"),
                (false, Priority::Bulk, 3, 1, "malformed"),
            ]
        );
        assert_eq!(e[1].batches[0].request, batch(7, Priority::OtWrite).request);
        s.remove(&e[1]).unwrap();
        s.remove(&e[0]).unwrap();
        assert_eq!((s.stats().batches, s.stats().flows), (1, 2));
        assert_eq!(entries(s.dir()).unwrap().len(), 1);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_guess() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SetAside::open(d.path().to_path_buf()).unwrap();
        s.put(&batch(5, Priority::Bulk), "r").unwrap();
        let p = d.path().join(file_name(Priority::Bulk, 5, SET_ASIDE));
        let mut data = fs::read(&p).unwrap();
        let n = data.len();
        data[n - 1] ^= 1;
        fs::write(&p, data).unwrap();
        assert!(entries(d.path()).is_err());
    }
}
