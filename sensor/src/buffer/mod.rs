//! The ship-side disk buffer: every batch is appended here before upload and
//! stays until the collector has acked it (an ack means "in Kafka"), so a
//! link cut, a crash or a power loss loses nothing that was written.
//!
//! Layout of the buffer directory:
//! - `seg-<first seq, 20 digits>.twb`: append-only segment files. A segment
//!   starts with the 8-byte magic `TWBUF01\n`; then records of
//!   `[u32 LE length][u32 LE CRC-32 of the body][body]`, the body being
//!   `[u64 LE seq][u32 LE flows][u32 LE encoding][payload]`.
//! - `acked`: the highest seq acked by the collector (written atomically).
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

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidewatch_proto::v1::UploadRequest;

use crate::batch::{Class, PreparedBatch};

pub mod classed;
pub use classed::ClassedBuffer;

const MAGIC: &[u8; 8] = b"TWBUF01\n";
pub(crate) const HEADER: usize = 8;
/// A record larger than this is corruption (batches are capped far below).
const MAX_RECORD: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid buffer configuration: {0}")]
    Config(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BufferError + '_ {
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

#[derive(Debug, Clone)]
struct Segment {
    last_seq: u64,
    path: PathBuf,
    bytes: u64,
    /// (seq, flows) of every valid record, in order.
    records: Vec<(u64, u32)>,
}

/// One stored batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub seq: u64,
    pub flows: u32,
    pub request: UploadRequest,
}

impl Stored {
    pub fn into_prepared(self, class: Class) -> PreparedBatch {
        PreparedBatch {
            seq: self.seq,
            flows: self.flows as usize,
            class,
            request: self.request,
            sent: false,
        }
    }
}

/// Bytes `b` takes on disk as one record.
pub fn record_len(b: &PreparedBatch) -> u64 {
    8 + 16 + b.request.payload.len() as u64
}

fn encode_body(b: &PreparedBatch) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + b.request.payload.len());
    body.extend_from_slice(&b.seq.to_le_bytes());
    body.extend_from_slice(&(b.flows as u32).to_le_bytes());
    body.extend_from_slice(&(b.request.encoding as u32).to_le_bytes());
    body.extend_from_slice(&b.request.payload);
    body
}

fn decode_body(body: &[u8]) -> Option<Stored> {
    if body.len() < 16 {
        return None;
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let flows = u32::from_le_bytes(body[8..12].try_into().ok()?);
    let encoding = u32::from_le_bytes(body[12..16].try_into().ok()?) as i32;
    Some(Stored {
        seq,
        flows,
        request: UploadRequest {
            seq,
            encoding,
            payload: body[16..].to_vec(),
        },
    })
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
    if data.len() < HEADER || &data[..HEADER] != MAGIC {
        rep.bad_header = true;
        return Ok(rep);
    }
    let mut at = HEADER;
    rep.valid_end = at as u64;
    let mut in_garbage = false;
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        let end = at + 8 + len as usize;
        let ok = (16..=MAX_RECORD).contains(&len)
            && end <= data.len()
            && crc32fast::hash(&data[at + 8..end]) == crc;
        if ok {
            let body = &data[at + 8..end];
            let seq = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
            let flows = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
            rep.records.push((seq, flows, at as u64));
            at = end;
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

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.twb")
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, BufferError> {
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
            torn_tail_bytes: rep.len.saturating_sub(rep.valid_end.max(HEADER as u64)),
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
            let len = u32::from_le_bytes(data[off..off + 4].try_into().expect("4")) as usize;
            out.extend_from_slice(&data[off..off + 8 + len]);
        }
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&out).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        removed += rep.corrupt;
    }
    Ok(removed)
}

/// What `open` found.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenReport {
    pub segments: usize,
    pub pending_batches: u64,
    pub corrupt_records: u64,
}

/// What the buffer and its reader agree on, under one lock so that a batch
/// is either handed to the uplink or dropped, never both.
#[derive(Debug, Default)]
struct Handover {
    /// Highest seq the reader has handed to the uplink.
    handed: u64,
    /// Every seq up to here was dropped from disk (cap reached).
    floor: u64,
}

pub struct DiskBuffer {
    cfg: BufferConfig,
    handover: Arc<Mutex<Handover>>,
    segments: VecDeque<Segment>,
    active: Option<File>,
    acked: u64,
    stats: BufferStats,
    last_sync: Instant,
    dirty: bool,
}

impl DiskBuffer {
    /// Opens (or creates) the buffer, validating every segment: corrupt
    /// records are skipped and counted, a torn tail is cut off.
    pub fn open(cfg: BufferConfig) -> Result<(DiskBuffer, OpenReport), BufferError> {
        if cfg.max_bytes < 256 * 1024 {
            return Err(BufferError::Config(format!(
                "buffer cap of {} bytes is below the minimum of 256 KiB",
                cfg.max_bytes
            )));
        }
        fs::create_dir_all(&cfg.dir).map_err(io_err(&cfg.dir))?;
        let acked_path = cfg.dir.join("acked");
        let acked = match fs::read_to_string(&acked_path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&acked_path)(e)),
        };
        let mut buf = DiskBuffer {
            cfg,
            handover: Arc::new(Mutex::new(Handover::default())),
            segments: VecDeque::new(),
            active: None,
            acked,
            stats: BufferStats::default(),
            last_sync: Instant::now(),
            dirty: false,
        };
        let mut report = OpenReport::default();
        let listed = list_segments(&buf.cfg.dir)?;
        let n = listed.len();
        for (i, (first, path)) in listed.into_iter().enumerate() {
            let rep = scan(&path)?;
            report.corrupt_records += rep.corrupt;
            if rep.bad_header {
                // Not a segment we can read at all (e.g. torn at creation).
                report.corrupt_records += 1;
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            if i + 1 == n && rep.valid_end < rep.len {
                // Cut the torn tail so appends continue from a clean end.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(rep.valid_end).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            let records: Vec<(u64, u32)> = rep.records.iter().map(|(s, f, _)| (*s, *f)).collect();
            let last = records.last().map(|r| r.0).unwrap_or(first);
            let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
            buf.segments.push_back(Segment {
                last_seq: last,
                path,
                bytes,
                records,
            });
        }
        buf.stats.corrupt_records = report.corrupt_records;
        buf.reclaim()?;
        buf.recount();
        report.segments = buf.segments.len();
        report.pending_batches = buf.stats.pending_batches;
        Ok((buf, report))
    }

    pub fn stats(&self) -> BufferStats {
        self.stats
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    fn recount(&mut self) {
        let acked = self.acked;
        let mut batches = 0;
        let mut flows = 0;
        let mut bytes = 0;
        for s in &self.segments {
            bytes += s.bytes;
            for (seq, f) in &s.records {
                if *seq > acked {
                    batches += 1;
                    flows += *f as u64;
                }
            }
        }
        self.stats.pending_batches = batches;
        self.stats.pending_flows = flows;
        self.stats.bytes = bytes;
    }

    /// Appends a batch (durable per the fsync policy). Returns false if it
    /// was refused because the buffer is full under `DropNewest`.
    pub fn append(&mut self, b: &PreparedBatch) -> Result<bool, BufferError> {
        let body = encode_body(b);
        let rec_len = 8 + body.len() as u64;
        debug_assert_eq!(rec_len, record_len(b));
        // Make room.
        while self.stats.bytes + rec_len > self.cfg.max_bytes && !self.segments.is_empty() {
            match self.cfg.when_full {
                WhenFull::DropNewest => {
                    self.stats.dropped_batches += 1;
                    self.stats.dropped_flows += b.flows as u64;
                    return Ok(false);
                }
                WhenFull::DropOldest => self.drop_oldest()?,
            }
        }
        let need_new = match self.segments.back() {
            None => true,
            Some(s) => self.active.is_none() || s.bytes + rec_len > self.cfg.segment_bytes(),
        };
        if need_new {
            self.sync()?;
            let path = self.cfg.dir.join(segment_name(b.seq));
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            f.write_all(MAGIC).map_err(io_err(&path))?;
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(dir))?;
            }
            self.active = Some(f);
            self.segments.push_back(Segment {
                last_seq: b.seq,
                path,
                bytes: HEADER as u64,
                records: Vec::new(),
            });
            self.stats.bytes += HEADER as u64;
        }
        let seg = self.segments.back_mut().expect("segment exists");
        let f = self.active.as_mut().expect("active segment");
        let mut rec = Vec::with_capacity(rec_len as usize);
        rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        rec.extend_from_slice(&body);
        f.write_all(&rec).map_err(io_err(&seg.path))?;
        seg.bytes += rec_len;
        seg.last_seq = b.seq;
        seg.records.push((b.seq, b.flows as u32));
        self.stats.bytes += rec_len;
        self.stats.pending_batches += 1;
        self.stats.pending_flows += b.flows as u64;
        self.dirty = true;
        match self.cfg.fsync {
            Fsync::EveryBatch => self.sync()?,
            Fsync::Interval(d) if self.last_sync.elapsed() >= d => self.sync()?,
            _ => {}
        }
        Ok(true)
    }

    /// Forces appended data to stable storage.
    pub fn sync(&mut self) -> Result<(), BufferError> {
        if self.dirty {
            if let (Some(f), Some(s)) = (self.active.as_mut(), self.segments.back()) {
                f.sync_data().map_err(io_err(&s.path))?;
            }
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Drops the oldest segment (counting what was not yet acked nor handed
    /// to the uplink); false if there is none.
    pub fn drop_oldest_segment(&mut self) -> Result<bool, BufferError> {
        if self.segments.is_empty() {
            return Ok(false);
        }
        self.drop_oldest()?;
        Ok(true)
    }

    /// Counts `b` as dropped without storing it (buffer full, drop-newest).
    pub fn refuse(&mut self, b: &PreparedBatch) {
        self.stats.dropped_batches += 1;
        self.stats.dropped_flows += b.flows as u64;
    }

    fn drop_oldest(&mut self) -> Result<(), BufferError> {
        let Some(s) = self.segments.pop_front() else {
            return Ok(());
        };
        if self.segments.is_empty() {
            self.active = None;
        }
        // Batches the reader already handed to the uplink are in flight and
        // will be delivered: they leave the disk but are not lost.
        let handed = {
            let mut h = self.handover.lock().expect("handover lock");
            h.floor = h.floor.max(s.last_seq);
            h.handed
        };
        for (seq, f) in &s.records {
            if *seq > self.acked {
                if *seq > handed {
                    self.stats.dropped_batches += 1;
                    self.stats.dropped_flows += *f as u64;
                }
                self.stats.pending_batches = self.stats.pending_batches.saturating_sub(1);
                self.stats.pending_flows = self.stats.pending_flows.saturating_sub(*f as u64);
            }
        }
        self.stats.bytes = self.stats.bytes.saturating_sub(s.bytes);
        fs::remove_file(&s.path).map_err(io_err(&s.path))?;
        Ok(())
    }

    /// Records that the collector acked every batch up to `seq`; deletes
    /// segments that hold nothing unacked any more.
    pub fn ack(&mut self, seq: u64) -> Result<(), BufferError> {
        if seq <= self.acked {
            return Ok(());
        }
        for s in &self.segments {
            for (q, f) in &s.records {
                if *q > self.acked && *q <= seq {
                    self.stats.pending_batches = self.stats.pending_batches.saturating_sub(1);
                    self.stats.pending_flows = self.stats.pending_flows.saturating_sub(*f as u64);
                }
            }
        }
        self.acked = seq;
        // Atomic (rename) but not fsynced: after a power loss the cursor may
        // be a little behind, and the shore drops the batches sent again.
        let path = self.cfg.dir.join("acked");
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, format!("{seq}\n")).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.reclaim()
    }

    fn reclaim(&mut self) -> Result<(), BufferError> {
        // Keep the active (last) segment even when fully acked.
        while self.segments.len() > 1
            && self
                .segments
                .front()
                .is_some_and(|s| s.last_seq <= self.acked)
        {
            let s = self.segments.pop_front().expect("checked");
            self.stats.bytes = self.stats.bytes.saturating_sub(s.bytes);
            fs::remove_file(&s.path).map_err(io_err(&s.path))?;
        }
        Ok(())
    }

    /// The oldest batch not yet acked, read from disk without handing it
    /// to anyone (for the age of the backlog). `None` if there is none or
    /// it cannot be read.
    pub fn peek_oldest_pending(&self) -> Option<Stored> {
        let seg = self
            .segments
            .iter()
            .find(|s| s.records.iter().any(|(q, _)| *q > self.acked))?;
        let f = File::open(&seg.path).ok()?;
        let mut r = BufReader::with_capacity(64 * 1024, f);
        r.seek(SeekFrom::Start(HEADER as u64)).ok()?;
        loop {
            match read_record(&mut r) {
                Ok(Some(s)) if s.seq > self.acked => return Some(s),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.cfg.max_bytes
    }

    /// A reader over the batches with seq > `after`, oldest first.
    pub fn reader(&self, after: u64) -> Reader {
        Reader {
            dir: self.cfg.dir.clone(),
            after,
            current: None,
            handover: self.handover.clone(),
        }
    }
}

/// Streams stored batches from disk in bounded memory (one record at a
/// time). Segments deleted meanwhile (acked or dropped) are skipped.
pub struct Reader {
    dir: PathBuf,
    after: u64,
    current: Option<(u64, BufReader<File>)>,
    handover: Arc<Mutex<Handover>>,
}

impl Reader {
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
                r.seek(SeekFrom::Start(HEADER as u64))
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
    for i in 1..rest.len().saturating_sub(8) {
        let len = u32::from_le_bytes(rest[i..i + 4].try_into().expect("4"));
        let crc = u32::from_le_bytes(rest[i + 4..i + 8].try_into().expect("4"));
        let end = i + 8 + len as usize;
        if (16..=MAX_RECORD).contains(&len)
            && end <= rest.len()
            && crc32fast::hash(&rest[i + 8..end]) == crc
        {
            r.seek(SeekFrom::Start(start + i as u64))?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads one record at the reader's position; `Ok(None)` at a clean or
/// incomplete end (more may be appended later), `Err` on corruption.
fn read_record(r: &mut BufReader<File>) -> io::Result<Option<Stored>> {
    let start = r.stream_position()?;
    let mut head = [0u8; 8];
    if let Err(e) = r.read_exact(&mut head) {
        r.seek(SeekFrom::Start(start))?;
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4"));
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4"));
    if !(16..=MAX_RECORD).contains(&len) {
        r.seek(SeekFrom::Start(start))?;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad record length",
        ));
    }
    let mut body = vec![0u8; len as usize];
    if let Err(e) = r.read_exact(&mut body) {
        r.seek(SeekFrom::Start(start))?;
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if crc32fast::hash(&body) != crc {
        // Back to the damaged record: `resync` looks for the next one.
        r.seek(SeekFrom::Start(start))?;
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad record CRC"));
    }
    decode_body(&body)
        .map(Some)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short record"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewatch_proto::v1::Encoding;

    fn batch(seq: u64, size: usize) -> PreparedBatch {
        PreparedBatch {
            seq,
            flows: 10,
            class: Class::Bulk,
            sent: false,
            request: UploadRequest {
                seq,
                encoding: Encoding::Protobuf as i32,
                payload: vec![(seq % 251) as u8; size],
            },
        }
    }

    fn cfg(dir: &Path, max: u64) -> BufferConfig {
        BufferConfig {
            dir: dir.to_path_buf(),
            max_bytes: max,
            fsync: Fsync::Never,
            when_full: WhenFull::DropOldest,
        }
    }

    fn drain(r: &mut Reader) -> Vec<u64> {
        let mut v = Vec::new();
        while let Some(s) = r.next_batch().unwrap() {
            assert!(!s.request.payload.is_empty());
            v.push(s.seq);
        }
        v
    }

    #[test]
    fn survives_restart_and_replays_from_first_unacked() {
        let d = tempfile::tempdir().unwrap();
        let (mut b, _) = DiskBuffer::open(cfg(d.path(), 1 << 20)).unwrap();
        for s in 1..=50 {
            assert!(b.append(&batch(s, 1000)).unwrap());
        }
        b.ack(20).unwrap();
        drop(b); // crash
        let (b, rep) = DiskBuffer::open(cfg(d.path(), 1 << 20)).unwrap();
        assert_eq!(rep.pending_batches, 30);
        assert_eq!(b.stats().pending_flows, 300);
        let got = drain(&mut b.reader(b.acked()));
        assert_eq!(got, (21..=50).collect::<Vec<_>>());
    }

    #[test]
    fn acked_segments_are_reclaimed() {
        let d = tempfile::tempdir().unwrap();
        let (mut b, _) = DiskBuffer::open(cfg(d.path(), 512 * 1024)).unwrap();
        for s in 1..=200 {
            b.append(&batch(s, 2000)).unwrap();
        }
        let before = b.stats().bytes;
        b.ack(190).unwrap();
        assert!(
            b.stats().bytes < before / 4,
            "{} vs {before}",
            b.stats().bytes
        );
        assert_eq!(b.stats().pending_batches, 10);
    }

    #[test]
    fn cap_drops_oldest_and_counts() {
        let d = tempfile::tempdir().unwrap();
        let (mut b, _) = DiskBuffer::open(cfg(d.path(), 256 * 1024)).unwrap();
        for s in 1..=400 {
            assert!(b.append(&batch(s, 2000)).unwrap());
        }
        let st = b.stats();
        assert!(st.bytes <= 256 * 1024);
        assert!(st.dropped_batches > 0);
        assert_eq!(st.dropped_batches + st.pending_batches, 400);
        assert_eq!(st.dropped_flows, st.dropped_batches * 10);
        let got = drain(&mut b.reader(0));
        assert_eq!(got.len() as u64, st.pending_batches);
        assert_eq!(*got.last().unwrap(), 400, "the newest are kept");
    }

    #[test]
    fn cap_drop_newest_refuses() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path(), 256 * 1024);
        c.when_full = WhenFull::DropNewest;
        let (mut b, _) = DiskBuffer::open(c).unwrap();
        let mut refused = 0;
        for s in 1..=400 {
            if !b.append(&batch(s, 2000)).unwrap() {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert_eq!(b.stats().dropped_batches, refused);
        assert_eq!(drain(&mut b.reader(0))[0], 1, "the oldest are kept");
    }

    #[test]
    fn corruption_is_skipped_counted_and_the_rest_kept() {
        let d = tempfile::tempdir().unwrap();
        let (mut b, _) = DiskBuffer::open(cfg(d.path(), 1 << 20)).unwrap();
        for s in 1..=30 {
            b.append(&batch(s, 500)).unwrap();
        }
        drop(b);
        let (_, path) = list_segments(d.path()).unwrap().pop().unwrap();
        let mut data = fs::read(&path).unwrap();
        // Flip bytes inside record 10's body, then tear the last record.
        let rec = 8 + 16 + 500;
        data[HEADER + 9 * rec + 40] ^= 0xff;
        data.truncate(data.len() - 100);
        fs::write(&path, &data).unwrap();
        let rep = scan(&path).unwrap();
        assert_eq!(rep.corrupt, 2, "one flipped record, one torn tail");
        let (b, open) = DiskBuffer::open(cfg(d.path(), 1 << 20)).unwrap();
        assert_eq!(open.corrupt_records, 2);
        assert_eq!(b.stats().corrupt_records, 2);
        let got: Vec<u64> = {
            let mut r = b.reader(0);
            let mut v = Vec::new();
            while let Some(s) = r.next_batch().unwrap() {
                v.push(s.seq);
            }
            v
        };
        let want: Vec<u64> = (1..=29).filter(|s| *s != 10).collect();
        assert_eq!(
            got, want,
            "everything before and after the damage is delivered"
        );
        assert_eq!(
            open.pending_batches, 28,
            "all but the two damaged records are accounted"
        );
    }

    #[test]
    fn reader_follows_appends_and_non_contiguous_seqs() {
        let d = tempfile::tempdir().unwrap();
        let (mut b, _) = DiskBuffer::open(cfg(d.path(), 256 * 1024)).unwrap();
        let mut r = b.reader(0);
        assert!(r.next_batch().unwrap().is_none());
        for s in 1..=5 {
            b.append(&batch(s, 100)).unwrap();
        }
        assert_eq!(drain(&mut r), vec![1, 2, 3, 4, 5]);
        // A restart skipped a reserved block of seqs; big batches rotate segments.
        for s in 5000..5040 {
            b.append(&batch(s, 6000)).unwrap();
        }
        assert_eq!(drain(&mut r), (5000..5040).collect::<Vec<_>>());
    }
}
