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
use super::{
    BufferConfig, BufferError, BufferStats, DiskBuffer, OpenReport, Reader, Stored, WhenFull,
};
use crate::batch::{PreparedBatch, Priority};

/// The disk buffer of a running sensor: one [`DiskBuffer`] per upload
/// class under one shared size cap.
pub struct ClassedBuffer {
    max_bytes: u64,
    when_full: WhenFull,
    bufs: [DiskBuffer; 3],
}

/// Directory of one class's part of the buffer.
pub fn class_dir(buffer_dir: &Path, class: Priority) -> PathBuf {
    buffer_dir.join(class.name())
}

impl ClassedBuffer {
    /// Opens (or creates) the three parts, validating every segment.
    pub fn open(cfg: BufferConfig) -> Result<(ClassedBuffer, OpenReport), BufferError> {
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
        Ok((
            ClassedBuffer {
                max_bytes: cfg.max_bytes,
                when_full: cfg.when_full,
                bufs,
            },
            report,
        ))
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
                    let mut dropped = false;
                    for c in Priority::ALL.iter().rev() {
                        if self.bufs[*c as usize].drop_oldest_segment()? {
                            dropped = true;
                            break;
                        }
                    }
                    if !dropped {
                        break;
                    }
                }
            }
        }
        self.bufs[b.class as usize].append(b)
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
}
