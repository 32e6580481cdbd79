//! The live buffer of one upload class ([`DiskBuffer`]): appends batches
//! to the active segment, keeps the ack cursor, reclaims acked segments and
//! holds the size cap. What it shares with its [`Reader`]s is the
//! [`Handover`].

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::reader::read_record;
use super::record::{self, MAGIC, SEGMENT_HEADER};
use super::segment::{list_segments, scan, segment_name, Segment};
use super::{io_err, BufferConfig, BufferError, BufferStats, Fsync, Reader, Stored, WhenFull};
use crate::batch::PreparedBatch;
use tidewatch_proto::state_file::{self, Durability};

/// What `open` found.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenReport {
    pub segments: usize,
    pub pending_batches: u64,
    pub corrupt_records: u64,
    /// Splits a crash had interrupted, completed on open.
    pub splits_completed: u64,
}

/// What the buffer and its reader agree on, under one lock so that a batch
/// is either handed to the uplink or dropped, never both.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    /// Highest seq the reader has handed to the uplink.
    pub handed: u64,
    /// Every seq up to here was dropped from disk (cap reached).
    pub floor: u64,
}

/// The disk buffer of one upload class (see the module docs of [`super`]).
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

    /// The highest seq appended or acked (a batch appended next must have
    /// a higher one).
    pub fn last_seq(&self) -> u64 {
        self.segments
            .back()
            .map_or(0, |s| s.last_seq)
            .max(self.acked)
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
        let rec = record::encode(b);
        let rec_len = rec.len() as u64;
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
            if let Err(e) = f.write_all(MAGIC) {
                // A segment without its header would be unreadable.
                drop(f);
                let _ = fs::remove_file(&path);
                return Err(io_err(&path)(e));
            }
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(dir))?;
            }
            self.active = Some(f);
            self.segments.push_back(Segment {
                last_seq: b.seq,
                path,
                bytes: SEGMENT_HEADER as u64,
                records: Vec::new(),
            });
            self.stats.bytes += SEGMENT_HEADER as u64;
        }
        let seg = self.segments.back_mut().expect("segment exists");
        let f = self.active.as_mut().expect("active segment");
        if let Err(e) = f.write_all(&rec) {
            // Cut a partly written record (a full disk) so the segment
            // still ends on a whole one and the next append continues it.
            let _ = f
                .set_len(seg.bytes)
                .and_then(|()| f.seek(SeekFrom::Start(seg.bytes)));
            return Err(io_err(&seg.path)(e));
        }
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
        self.count_dropped(b.flows as u64);
    }

    /// Counts a batch of `flows` as dropped.
    pub fn count_dropped(&mut self, flows: u64) {
        self.stats.dropped_batches += 1;
        self.stats.dropped_flows += flows;
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
        // Atomic, not synced: after a power loss the cursor may be a little
        // behind, and the shore drops the batches sent again.
        let path = self.cfg.dir.join("acked");
        state_file::replace(&path, format!("{seq}\n").as_bytes(), Durability::Atomic)
            .map_err(io_err(&path))?;
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
        r.seek(SeekFrom::Start(SEGMENT_HEADER as u64)).ok()?;
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
        Reader::new(self.cfg.dir.clone(), after, self.handover.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tidewatch_proto::v1::{Encoding, UploadRequest};

    use super::*;
    use crate::batch::Priority;
    use crate::buffer::segment::list_segments;

    fn batch(seq: u64, size: usize) -> PreparedBatch {
        PreparedBatch {
            seq,
            flows: 10,
            class: Priority::Bulk,
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
        data[SEGMENT_HEADER + 9 * rec + 40] ^= 0xff;
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
