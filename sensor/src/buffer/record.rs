//! The on-disk format of the buffer, in one place: the segment header and
//! the record that holds one batch, its encoding and its one validity check
//! ([`check`]), which the open scan, the reader, its resync after damage
//! and the offline repair all use.
//!
//! A segment file starts with the 8-byte magic `TWBUF01\n`, then records of
//! `[u32 LE body length][u32 LE CRC-32 of the body][body]`, the body being
//! `[u64 LE seq][u32 LE flows][u32 LE encoding][payload]`.

use tidewatch_proto::v1::UploadRequest;

use super::Stored;
use crate::batch::PreparedBatch;

/// The first bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"TWBUF01\n";
/// Length of the segment header (the magic).
pub const SEGMENT_HEADER: usize = MAGIC.len();
/// Length prefix and CRC before each record's body.
pub const RECORD_HEADER: usize = 8;
/// The fixed fields at the start of a body (seq, flows, encoding).
const BODY_FIELDS: usize = 16;
/// A record larger than this is corruption (batches are capped far below).
const MAX_BODY: u32 = 64 * 1024 * 1024;

/// Bytes `b` takes on disk as one record.
pub fn len(b: &PreparedBatch) -> u64 {
    (RECORD_HEADER + BODY_FIELDS + b.request.payload.len()) as u64
}

/// The whole record of `b`: header, then body.
pub fn encode(b: &PreparedBatch) -> Vec<u8> {
    let body_len = BODY_FIELDS + b.request.payload.len();
    let mut rec = Vec::with_capacity(RECORD_HEADER + body_len);
    rec.extend_from_slice(&(body_len as u32).to_le_bytes());
    rec.extend_from_slice(&[0; 4]); // CRC, below
    rec.extend_from_slice(&b.seq.to_le_bytes());
    rec.extend_from_slice(&(b.flows as u32).to_le_bytes());
    rec.extend_from_slice(&(b.request.encoding as u32).to_le_bytes());
    rec.extend_from_slice(&b.request.payload);
    let crc = crc32fast::hash(&rec[RECORD_HEADER..]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// What [`check`] found at the start of some bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A whole, intact record of this many bytes.
    Valid(usize),
    /// A record may start here but needs this many bytes in all (more may
    /// still be appended, or the write was torn).
    Incomplete(usize),
    /// No record starts here: a length out of range or a CRC mismatch.
    Corrupt,
}

/// Checks the record at the start of `data` (length in range, all of it
/// there, CRC of the body).
pub fn check(data: &[u8]) -> Check {
    if data.len() < RECORD_HEADER {
        return Check::Incomplete(RECORD_HEADER);
    }
    let body_len = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes"));
    if !(BODY_FIELDS as u32..=MAX_BODY).contains(&body_len) {
        return Check::Corrupt;
    }
    let end = RECORD_HEADER + body_len as usize;
    if data.len() < end {
        return Check::Incomplete(end);
    }
    let crc = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
    if crc32fast::hash(&data[RECORD_HEADER..end]) == crc {
        Check::Valid(end)
    } else {
        Check::Corrupt
    }
}

/// (seq, flows) of a record that [`check`] found valid.
pub fn seq_and_flows(rec: &[u8]) -> (u64, u32) {
    let body = &rec[RECORD_HEADER..];
    (
        u64::from_le_bytes(body[0..8].try_into().expect("8 bytes")),
        u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")),
    )
}

/// The batch in a record that [`check`] found valid.
pub fn decode(rec: &[u8]) -> Stored {
    let (seq, flows) = seq_and_flows(rec);
    let body = &rec[RECORD_HEADER..];
    let encoding = u32::from_le_bytes(body[12..16].try_into().expect("4 bytes")) as i32;
    Stored {
        seq,
        flows,
        request: UploadRequest {
            seq,
            encoding,
            payload: body[BODY_FIELDS..].to_vec(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Priority;

    #[test]
    fn a_record_round_trips_and_any_damage_is_caught() {
        let b = PreparedBatch {
            seq: 7,
            flows: 3,
            class: Priority::Bulk,
            sent: false,
            request: UploadRequest {
                seq: 7,
                encoding: 2,
                payload: b"payload".to_vec(),
            },
        };
        let rec = encode(&b);
        assert_eq!(rec.len() as u64, len(&b));
        assert_eq!(check(&rec), Check::Valid(rec.len()));
        let s = decode(&rec);
        assert_eq!((s.seq, s.flows, &s.request), (7, 3, &b.request));
        for cut in 0..rec.len() {
            assert!(matches!(check(&rec[..cut]), Check::Incomplete(_)), "{cut}");
        }
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x01;
            assert_ne!(check(&bad), Check::Valid(rec.len()), "flipped byte {i}");
        }
    }
}
