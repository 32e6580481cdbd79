//! The disk buffer split by upload priority: one [`DiskBuffer`] per
//! [`Priority`] under `STATE_DIR/buffer/<class>/`, sharing one size cap.
//!
//! Each class is its own FIFO with its own ack cursor, so the uplink can
//! send a higher class first (the daily byte budget decides when that
//! matters) while acks stay in order within a class. When the shared cap is
//! reached, drop-oldest takes the oldest segment of the *lowest* class that
//! has one (bulk flows go before OT-write flows, which go before sensor
//! status and assets); drop-newest refuses a new batch of flows, while a new
//! status or asset batch (the report of the drops) replaces older ones or,
//! with none left, goes in over the cap by its own small size. Every
//! dropped batch is counted in its class.

use std::path::{Path, PathBuf};

use super::record::{self, SEGMENT_HEADER};
use super::set_aside::{self, Entry, SetAside, SetAsideStats};
use super::{
    BufferConfig, BufferError, BufferStats, DiskBuffer, OpenReport, Reader, Stored, WhenFull,
};
use crate::batch::{PreparedBatch, Priority, Sealer, StateError};

/// The disk buffer of a running sensor: one [`DiskBuffer`] per upload
/// class under one shared size cap.
pub struct ClassedBuffer {
    max_bytes: u64,
    when_full: WhenFull,
    bufs: [DiskBuffer; 3],
    set_aside: SetAside,
    /// Flows dropped by class to make room on a full disk (part of each
    /// class's dropped flows).
    disk_full_flows: [u64; 3],
    /// Held (locked) while open: one process at a time owns the buffer.
    _lock: std::fs::File,
}

/// What [`ClassedBuffer::retry_set_aside`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetryReport {
    /// Set-aside batches put back into the queue.
    pub retried: u64,
    /// The batches they became (sealed again under the current limits).
    pub batches: u64,
    pub flows: u64,
    /// Set-aside batches that cannot be decoded (left where they are).
    pub undecodable: u64,
}

/// Why a buffer operation that also seals failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Directory of the set-aside batches and split journals.
pub fn set_aside_dir(buffer_dir: &Path) -> PathBuf {
    buffer_dir.join("set-aside")
}

/// Directory of one class's part of the buffer.
pub fn class_dir(buffer_dir: &Path, class: Priority) -> PathBuf {
    buffer_dir.join(class.name())
}

impl ClassedBuffer {
    /// Opens (or creates) the three parts, validating every segment.
    pub fn open(cfg: BufferConfig) -> Result<(ClassedBuffer, OpenReport), BufferError> {
        std::fs::create_dir_all(&cfg.dir).map_err(super::io_err(&cfg.dir))?;
        let lock_path = cfg.dir.join("lock");
        let lock = std::fs::File::create(&lock_path).map_err(super::io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(BufferError::Config(format!(
                "the buffer in {} is in use by another process (a running sensor?); stop it first",
                cfg.dir.display()
            )));
        }
        let mut report = OpenReport::default();
        let mut open = |class: Priority| -> Result<DiskBuffer, BufferError> {
            let (b, r) = DiskBuffer::open(BufferConfig {
                dir: class_dir(&cfg.dir, class),
                ..cfg.clone()
            })?;
            report.segments += r.segments;
            report.pending_batches += r.pending_batches;
            report.corrupt_records += r.corrupt_records;
            Ok(b)
        };
        let bufs = [
            open(Priority::Control)?,
            open(Priority::OtWrite)?,
            open(Priority::Bulk)?,
        ];
        let mut buf = ClassedBuffer {
            max_bytes: cfg.max_bytes,
            when_full: cfg.when_full,
            bufs,
            set_aside: SetAside::open(set_aside_dir(&cfg.dir))?,
            disk_full_flows: [0; 3],
            _lock: lock,
        };
        report.splits_completed = buf.complete_splits()?;
        Ok((buf, report))
    }

    /// Completes the splits a crash interrupted: the replaced batch is done
    /// with, and every replacement not yet in the buffer goes in (nothing
    /// else was appended to its class since, see [`Self::replace`]).
    fn complete_splits(&mut self) -> Result<u64, BufferError> {
        let all = set_aside::entries(self.set_aside.dir())?;
        let mut done = 0;
        for j in all.iter().filter(|e| e.is_split()) {
            // A retry journaled before its set-aside batch was removed.
            for e in all.iter().filter(|e| !e.is_split()) {
                if (e.class, e.seq) == (j.class, j.seq) {
                    self.set_aside.remove(e)?;
                }
            }
            self.put_back(j)?;
            done += 1;
        }
        Ok(done)
    }

    /// Acks the batch a journal replaces, appends its replacements that
    /// are not in the buffer yet, syncs, and removes the journal.
    fn put_back(&mut self, journal: &Entry) -> Result<(), BufferError> {
        let class = journal.class;
        self.ack(class, journal.seq)?;
        for b in &journal.batches {
            if b.seq > self.bufs[class as usize].last_seq() {
                self.append(&b.clone().into_prepared(class))?;
            }
        }
        self.sync()?;
        self.set_aside.remove(journal)
    }

    /// Replaces `b`, the oldest batch of its class still in the uplink's
    /// hands, by `replacements` (its records under new seqs, higher than
    /// any in the buffer): journaled first, so a crash at any point leaves
    /// the records in the queue exactly once.
    pub fn replace(
        &mut self,
        b: &PreparedBatch,
        replacements: &[PreparedBatch],
        reason: &str,
    ) -> Result<(), BufferError> {
        let journal = self.journal(b.class, b.seq, reason, replacements)?;
        self.put_back(&journal)
    }

    fn journal(
        &self,
        class: Priority,
        seq: u64,
        reason: &str,
        replacements: &[PreparedBatch],
    ) -> Result<Entry, BufferError> {
        let path = self
            .set_aside
            .begin_split(class, seq, reason, replacements)?;
        Ok(Entry {
            path,
            class,
            seq,
            reason: reason.to_string(),
            batches: replacements
                .iter()
                .map(|r| Stored {
                    seq: r.seq,
                    flows: r.flows as u32,
                    request: r.request.clone(),
                })
                .collect(),
        })
    }

    /// Sets `b`, the oldest batch of its class still in the uplink's hands,
    /// aside with `reason`, and takes it out of the queue.
    pub fn set_aside(&mut self, b: &PreparedBatch, reason: &str) -> Result<(), BufferError> {
        self.set_aside.put(b, reason)?;
        self.ack(b.class, b.seq)
    }

    /// Counts `b` as dropped (it could be neither kept nor delivered).
    pub fn count_dropped(&mut self, b: &PreparedBatch) {
        self.bufs[b.class as usize].refuse(b);
    }

    /// Counts `flows` of `class` as dropped for a full disk (records that
    /// could not even be sealed).
    pub fn count_dropped_on_full_disk(&mut self, class: Priority, flows: u64) {
        self.bufs[class as usize].count_dropped(flows);
        self.disk_full_flows[class as usize] += flows;
    }

    /// What is set aside now.
    pub fn set_aside_stats(&self) -> &SetAsideStats {
        self.set_aside.stats()
    }

    /// Puts every set-aside batch back into the queue, sealed again by
    /// `sealer` under its current limits (new seqs: the collector never
    /// took the batch, so it goes up once).
    pub fn retry_set_aside(&mut self, sealer: &mut Sealer) -> Result<RetryReport, SealError> {
        let mut report = RetryReport::default();
        for e in set_aside::entries(self.set_aside.dir())? {
            if e.is_split() {
                continue;
            }
            let mut replacements = Vec::new();
            let mut decodable = true;
            for b in &e.batches {
                match sealer.reseal(&b.clone().into_prepared(e.class), sealer.max_bytes())? {
                    Some(r) => replacements.extend(r),
                    None => decodable = false,
                }
            }
            if !decodable {
                report.undecodable += 1;
                continue;
            }
            let journal = self.journal(e.class, e.seq, "retry", &replacements)?;
            self.set_aside.remove(&e)?;
            self.put_back(&journal)?;
            report.retried += 1;
            report.batches += replacements.len() as u64;
            report.flows += replacements.iter().map(|r| r.flows as u64).sum::<u64>();
        }
        Ok(report)
    }

    pub fn class(&self, c: Priority) -> &DiskBuffer {
        &self.bufs[c as usize]
    }

    /// Counters summed over the classes.
    pub fn stats(&self) -> BufferStats {
        let mut t = BufferStats::default();
        for b in &self.bufs {
            let s = b.stats();
            t.bytes += s.bytes;
            t.pending_batches += s.pending_batches;
            t.pending_flows += s.pending_flows;
            t.dropped_batches += s.dropped_batches;
            t.dropped_flows += s.dropped_flows;
            t.corrupt_records += s.corrupt_records;
        }
        t
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Appends `b` to its class, making room under the shared cap first.
    /// Returns false if it was refused (drop-newest and full).
    pub fn append(&mut self, b: &PreparedBatch) -> Result<bool, BufferError> {
        // Room for the record, and for a new segment's header if it opens one.
        let need = record::len(b) + SEGMENT_HEADER as u64;
        while self.stats().bytes + need > self.max_bytes {
            match self.when_full {
                // A status or asset batch is never refused: it carries the
                // report of what was dropped. It makes room from older ones
                // (a newer status supersedes them) or, with none left, goes
                // in over the cap by its own small size.
                WhenFull::DropNewest if b.class == Priority::Control => {
                    if !self.bufs[Priority::Control as usize].drop_oldest_segment()? {
                        break;
                    }
                }
                WhenFull::DropNewest => {
                    self.bufs[b.class as usize].refuse(b);
                    return Ok(false);
                }
                WhenFull::DropOldest => {
                    if !self.drop_oldest_segment()? {
                        break;
                    }
                }
            }
        }
        loop {
            match self.bufs[b.class as usize].append(b) {
                Err(e) if e.is_disk_full() => {
                    if !self.make_room_on_full_disk()? {
                        self.bufs[b.class as usize].refuse(b);
                        self.disk_full_flows[b.class as usize] += b.flows as u64;
                        return Ok(false);
                    }
                }
                r => return r,
            }
        }
    }

    /// Drops the oldest segment of the lowest class that has one; false if
    /// there is none.
    fn drop_oldest_segment(&mut self) -> Result<bool, BufferError> {
        for c in Priority::ALL.iter().rev() {
            if self.bufs[*c as usize].drop_oldest_segment()? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The disk is full (whatever the cap): drops the oldest segment of
    /// the lowest class, as the cap does, counting its flows as dropped
    /// for a full disk; false if nothing is left to drop.
    pub fn make_room_on_full_disk(&mut self) -> Result<bool, BufferError> {
        let before: Vec<u64> = self.bufs.iter().map(|b| b.stats().dropped_flows).collect();
        let dropped = self.drop_oldest_segment()?;
        for (i, b) in self.bufs.iter().enumerate() {
            self.disk_full_flows[i] += b.stats().dropped_flows - before[i];
        }
        if dropped {
            tracing::warn!(
                dropped_flows = self.disk_full_flows.iter().sum::<u64>(),
                "disk full: dropped the oldest buffered batches to make room (counted)"
            );
        }
        Ok(dropped)
    }

    /// Flows of `class` dropped to make room on a full disk.
    pub fn disk_full_flows(&self, class: Priority) -> u64 {
        self.disk_full_flows[class as usize]
    }

    pub fn sync(&mut self) -> Result<(), BufferError> {
        for b in &mut self.bufs {
            b.sync()?;
        }
        Ok(())
    }

    /// Every batch of `class` up to `seq` is acked.
    pub fn ack(&mut self, class: Priority, seq: u64) -> Result<(), BufferError> {
        self.bufs[class as usize].ack(seq)
    }

    /// A reader over the unacked batches of `class`, oldest first.
    pub fn reader(&self, class: Priority) -> Reader {
        let b = &self.bufs[class as usize];
        b.reader(b.acked())
    }

    /// The oldest unacked batch of each class that has one.
    pub fn oldest_pending(&self) -> Vec<(Priority, Stored)> {
        Priority::ALL
            .iter()
            .filter_map(|c| Some((*c, self.bufs[*c as usize].peek_oldest_pending()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Fsync;
    use tidewatch_proto::v1::{Encoding, UploadRequest};

    fn batch(seq: u64, class: Priority, size: usize) -> PreparedBatch {
        PreparedBatch {
            seq,
            flows: 10,
            class,
            sent: false,
            request: UploadRequest {
                seq,
                encoding: Encoding::Protobuf as i32,
                payload: vec![7; size],
            },
        }
    }

    fn open(dir: &Path, max: u64, when_full: WhenFull) -> ClassedBuffer {
        ClassedBuffer::open(BufferConfig {
            dir: dir.to_path_buf(),
            max_bytes: max,
            fsync: Fsync::Never,
            when_full,
        })
        .unwrap()
        .0
    }

    fn drain(buf: &ClassedBuffer, c: Priority) -> Vec<u64> {
        let mut r = buf.reader(c);
        let mut v = Vec::new();
        while let Some(s) = r.next_batch().unwrap() {
            v.push(s.seq);
        }
        v
    }

    #[test]
    fn classes_are_separate_fifos_that_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = open(dir.path(), 1 << 20, WhenFull::DropOldest);
        for (seq, c) in [
            (1, Priority::Bulk),
            (2, Priority::Control),
            (3, Priority::OtWrite),
            (4, Priority::Bulk),
            (5, Priority::Control),
        ] {
            assert!(buf.append(&batch(seq, c, 100)).unwrap());
        }
        buf.ack(Priority::Control, 2).unwrap();
        buf.sync().unwrap();
        drop(buf);
        let buf = open(dir.path(), 1 << 20, WhenFull::DropOldest);
        assert_eq!(drain(&buf, Priority::Control), [5]);
        assert_eq!(drain(&buf, Priority::OtWrite), [3]);
        assert_eq!(drain(&buf, Priority::Bulk), [1, 4]);
        assert_eq!(buf.stats().pending_batches, 4);
        let oldest: Vec<(Priority, u64)> = buf
            .oldest_pending()
            .into_iter()
            .map(|(c, s)| (c, s.seq))
            .collect();
        assert_eq!(
            oldest,
            [
                (Priority::Control, 5),
                (Priority::OtWrite, 3),
                (Priority::Bulk, 1)
            ]
        );
    }

    #[test]
    fn a_full_buffer_drops_the_lowest_class_first() {
        let dir = tempfile::tempdir().unwrap();
        // 256 KiB cap, 64 KiB segments; 20 KiB batches: 3 per segment.
        let mut buf = open(dir.path(), 256 * 1024, WhenFull::DropOldest);
        let mut seq = 0;
        let mut add = |buf: &mut ClassedBuffer, c: Priority, n: usize| {
            for _ in 0..n {
                seq += 1;
                assert!(buf.append(&batch(seq, c, 20_000)).unwrap());
            }
        };
        add(&mut buf, Priority::Control, 3);
        add(&mut buf, Priority::OtWrite, 3);
        add(&mut buf, Priority::Bulk, 6);
        assert_eq!(buf.stats().dropped_batches, 0);
        // Over the cap: bulk pays, oldest first.
        add(&mut buf, Priority::OtWrite, 3);
        assert!(buf.stats().bytes <= 256 * 1024);
        assert_eq!(buf.class(Priority::Bulk).stats().dropped_batches, 3);
        assert_eq!(buf.class(Priority::OtWrite).stats().dropped_batches, 0);
        assert_eq!(buf.class(Priority::Control).stats().dropped_batches, 0);
        // (Reading marks batches as handed to the uplink, which drops do
        // not count as lost: peek instead.)
        assert_eq!(buf.class(Priority::Bulk).stats().pending_batches, 3);
        assert_eq!(
            buf.class(Priority::Bulk).peek_oldest_pending().unwrap().seq,
            10
        );
        assert_eq!(buf.class(Priority::Control).stats().pending_batches, 3);
        // Once bulk is gone, OT writes go before control.
        add(&mut buf, Priority::Control, 6);
        assert_eq!(buf.class(Priority::Bulk).stats().dropped_batches, 6);
        assert!(buf.class(Priority::OtWrite).stats().dropped_batches > 0);
        assert_eq!(buf.class(Priority::Control).stats().dropped_batches, 0);
        assert_eq!(buf.stats().dropped_flows, 10 * buf.stats().dropped_batches);
    }

    #[test]
    fn drop_newest_refuses_and_counts_in_the_class() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = open(dir.path(), 256 * 1024, WhenFull::DropNewest);
        let mut refused = 0;
        for seq in 1..=20 {
            if !buf.append(&batch(seq, Priority::OtWrite, 20_000)).unwrap() {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert_eq!(
            buf.class(Priority::OtWrite).stats().dropped_batches,
            refused
        );
        assert_eq!(buf.stats().dropped_batches, refused);
        assert!(buf.stats().bytes <= 256 * 1024);
    }

    #[test]
    fn drop_newest_still_takes_the_status_that_reports_the_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = open(dir.path(), 256 * 1024, WhenFull::DropNewest);
        // Full to the last byte: flow batches as large as a status are refused.
        let mut seq = 0;
        for size in [20_000, 300] {
            loop {
                seq += 1;
                if !buf.append(&batch(seq, Priority::Bulk, size)).unwrap() {
                    break;
                }
            }
        }
        let refused = buf.stats().dropped_batches;
        assert_eq!(refused, 2);
        // Still, a status of that size goes in, and no flow is lost for it.
        assert!(buf.append(&batch(1000, Priority::Control, 300)).unwrap());
        assert_eq!(buf.class(Priority::Bulk).stats().dropped_batches, refused);
        // The next status replaces the previous one rather than a flow batch.
        assert!(buf.append(&batch(1001, Priority::Control, 300)).unwrap());
        assert_eq!(buf.class(Priority::Bulk).stats().dropped_batches, refused);
        let mut r = buf.reader(Priority::Control);
        let mut seqs = Vec::new();
        while let Some(s) = r.next_batch().unwrap() {
            seqs.push(s.seq);
        }
        assert_eq!(seqs, [1001]);
    }

    #[test]
    fn a_split_interrupted_at_any_step_completes_once_on_the_next_open() {
        let replacements = [batch(10, Priority::Bulk, 50), batch(11, Priority::Bulk, 50)];
        // How far the split got before the crash: journal only, then one
        // replacement appended, then both.
        for appended in 0..=2 {
            let dir = tempfile::tempdir().unwrap();
            let mut buf = open(dir.path(), 1 << 20, WhenFull::DropOldest);
            buf.append(&batch(1, Priority::Bulk, 100)).unwrap();
            buf.append(&batch(2, Priority::Bulk, 100)).unwrap();
            buf.set_aside
                .begin_split(Priority::Bulk, 1, "too large", &replacements)
                .unwrap();
            if appended > 0 {
                buf.ack(Priority::Bulk, 1).unwrap();
            }
            for r in &replacements[..appended] {
                buf.append(r).unwrap();
            }
            buf.sync().unwrap();
            drop(buf);
            let (buf, report) = ClassedBuffer::open(BufferConfig {
                dir: dir.path().to_path_buf(),
                max_bytes: 1 << 20,
                fsync: Fsync::Never,
                when_full: WhenFull::DropOldest,
            })
            .unwrap();
            assert_eq!(report.splits_completed, 1);
            assert_eq!(
                drain(&buf, Priority::Bulk),
                [2, 10, 11],
                "appended {appended}"
            );
            assert!(set_aside::entries(&set_aside_dir(dir.path()))
                .unwrap()
                .is_empty());
        }
    }

    #[test]
    fn replace_and_set_aside_take_the_batch_out_of_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = open(dir.path(), 1 << 20, WhenFull::DropOldest);
        for seq in 1..=3 {
            buf.append(&batch(seq, Priority::OtWrite, 100)).unwrap();
        }
        buf.replace(
            &batch(1, Priority::OtWrite, 100),
            &[
                batch(4, Priority::OtWrite, 40),
                batch(5, Priority::OtWrite, 40),
            ],
            "too large",
        )
        .unwrap();
        buf.set_aside(&batch(2, Priority::OtWrite, 100), "malformed")
            .unwrap();
        assert_eq!(drain(&buf, Priority::OtWrite), [3, 4, 5]);
        assert_eq!(
            buf.set_aside_stats(),
            &SetAsideStats {
                batches: 1,
                flows: 10,
                last_reason: "malformed".into()
            }
        );
        // Reported again after a restart, and one process at a time.
        assert!(ClassedBuffer::open(BufferConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 1 << 20,
            fsync: Fsync::Never,
            when_full: WhenFull::DropOldest,
        })
        .is_err());
        drop(buf);
        let buf = open(dir.path(), 1 << 20, WhenFull::DropOldest);
        assert_eq!(buf.set_aside_stats().batches, 1);
    }

    #[test]
    fn retry_puts_set_aside_records_back_under_new_seqs_once() {
        use crate::batch::{BatchConfig, Group, Sealer, SeqStore};
        use tidewatch_proto::v1::FlowRecord;
        let dir = tempfile::tempdir().unwrap();
        let mut sealer = Sealer::new(BatchConfig::default(), SeqStore::open(dir.path()).unwrap());
        let refused = sealer
            .seal(Group {
                class: Priority::Bulk,
                flows: vec![FlowRecord::default(); 3],
                ..Group::default()
            })
            .unwrap()
            .pop()
            .unwrap();
        let mut buf = open(&dir.path().join("buffer"), 1 << 20, WhenFull::DropOldest);
        buf.append(&refused).unwrap();
        buf.set_aside(&refused, "ACK_STATUS_TOO_LARGE").unwrap();
        assert!(drain(&buf, Priority::Bulk).is_empty());
        let r = buf.retry_set_aside(&mut sealer).unwrap();
        assert_eq!(
            r,
            RetryReport {
                retried: 1,
                batches: 1,
                flows: 3,
                undecodable: 0
            }
        );
        let back = drain(&buf, Priority::Bulk);
        assert_eq!(back.len(), 1);
        assert!(back[0] > refused.seq);
        assert_eq!(buf.set_aside_stats().batches, 0);
        // Nothing is left to retry a second time.
        assert_eq!(buf.retry_set_aside(&mut sealer).unwrap().retried, 0);
        assert_eq!(drain(&buf, Priority::Bulk), back);
    }
}
