//! The batch payload codec, shared by the sensor (encodes), ingest (checks
//! what a sensor sent) and the sink (decodes what Kafka holds): a
//! `tidewatch.v1.Batch` in protobuf, optionally zstd-compressed, as named by
//! the `Encoding` beside it. Decoding is bounded: a payload that would
//! decompress beyond the caller's limit is refused once past it (memory
//! grows with what is actually decompressed), and one whose records,
//! nested lists or strings exceed the [`crate::limits`] is refused before
//! any of it is materialised.

use std::io::Read;

use prost::Message;

use crate::limits::{check_shape, ShapeError};
use crate::v1::{Batch, Encoding, UploadRequest};

/// How much a decoded payload may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Bytes after decompression.
    pub max_decoded_bytes: usize,
    /// Records (flows, assets and statuses together).
    pub max_records: usize,
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown payload encoding {0}")]
    UnknownEncoding(i32),
    #[error("zstd payload cannot be decompressed: {0}")]
    Decompress(std::io::Error),
    #[error("zstd payload decompresses to more than {max} bytes")]
    TooLarge { max: usize },
    #[error("payload is not a valid Batch: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("payload refused before decoding: {0}")]
    Shape(#[from] ShapeError),
}

impl CodecError {
    /// Short stable label (metrics, dead-letter reasons, refusals).
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::UnknownEncoding(_) => "bad_encoding",
            CodecError::Decompress(_) => "bad_compression",
            CodecError::TooLarge { .. } => "decompressed_too_large",
            CodecError::Protobuf(_) | CodecError::Shape(ShapeError::Malformed(_)) => "bad_protobuf",
            CodecError::Shape(ShapeError::TooManyRecords { .. }) => "too_many_records",
            CodecError::Shape(_) => "oversized_field",
        }
    }

    /// Whether the payload is refused for its size (smaller batches of the
    /// same records would go through) rather than for being invalid.
    pub fn is_size(&self) -> bool {
        matches!(
            self,
            CodecError::TooLarge { .. } | CodecError::Shape(ShapeError::TooManyRecords { .. })
        )
    }
}

/// Encodes `batch` as an upload request: zstd at `zstd_level` when given
/// (plain protobuf should compression fail), plain protobuf otherwise.
pub fn encode(batch: &Batch, zstd_level: Option<i32>) -> UploadRequest {
    let raw = batch.encode_to_vec();
    let (encoding, payload) = match zstd_level.map(|l| zstd::bulk::compress(&raw, l)) {
        Some(Ok(z)) => (Encoding::ProtobufZstd, z),
        _ => (Encoding::Protobuf, raw),
    };
    UploadRequest {
        seq: batch.seq,
        encoding: encoding as i32,
        payload,
    }
}

/// Decodes a payload of `encoding` within `limits` (see the module docs).
pub fn decode(encoding: i32, payload: &[u8], limits: DecodeLimits) -> Result<Batch, CodecError> {
    let raw;
    let wire = match Encoding::try_from(encoding) {
        Ok(Encoding::Protobuf) => payload,
        Ok(Encoding::ProtobufZstd) => {
            raw = decompress(payload, limits.max_decoded_bytes)?;
            &raw[..]
        }
        _ => return Err(CodecError::UnknownEncoding(encoding)),
    };
    check_shape(wire, limits.max_records)?;
    Ok(Batch::decode(wire)?)
}

/// The zstd frame(s) in `payload`, refused once past `max` bytes.
fn decompress(payload: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    let decoder =
        zstd::stream::read::Decoder::with_buffer(payload).map_err(CodecError::Decompress)?;
    let mut out = Vec::with_capacity(payload.len().saturating_mul(4).min(max));
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(CodecError::Decompress)?;
    if out.len() > max {
        return Err(CodecError::TooLarge { max });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::FlowRecord;

    fn batch() -> Batch {
        Batch {
            seq: 9,
            flows: vec![FlowRecord::default(); 100],
            ..Batch::default()
        }
    }

    fn limits(max_decoded_bytes: usize, max_records: usize) -> DecodeLimits {
        DecodeLimits {
            max_decoded_bytes,
            max_records,
        }
    }

    #[test]
    fn round_trips_both_encodings() {
        for level in [None, Some(3)] {
            let r = encode(&batch(), level);
            assert_eq!(r.seq, 9);
            assert_eq!(
                decode(r.encoding, &r.payload, limits(1 << 20, 100)).unwrap(),
                batch()
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_or_may_not_decode() {
        let z = encode(&batch(), Some(3));
        let err = decode(z.encoding, &z.payload, limits(10, 100)).unwrap_err();
        assert_eq!(err.reason(), "decompressed_too_large");
        assert!(err.is_size());
        let err = decode(z.encoding, &z.payload, limits(1 << 20, 99)).unwrap_err();
        assert_eq!(err.reason(), "too_many_records");
        assert!(err.is_size());
        let err = decode(z.encoding, b"not zstd", limits(10, 100)).unwrap_err();
        assert_eq!(err.reason(), "bad_compression");
        assert_eq!(
            decode(99, b"", limits(10, 1)).unwrap_err().reason(),
            "bad_encoding"
        );
        let err = decode(Encoding::Protobuf as i32, &[0xff, 0xff], limits(10, 1)).unwrap_err();
        assert_eq!(err.reason(), "bad_protobuf");
        assert!(!err.is_size());
    }

    #[test]
    fn a_zstd_bomb_is_refused_past_the_limit_without_decompressing_it_all() {
        // 64 MiB of empty flow records (2 bytes each) in a few KB of zstd.
        let wire = [0x22u8, 0x00].repeat(32 << 20);
        let bomb = zstd::bulk::compress(&wire, 19).unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let z = Encoding::ProtobufZstd as i32;
        let err = decode(z, &bomb, limits(16 << 20, 50_000)).unwrap_err();
        assert_eq!(err.reason(), "decompressed_too_large");
        // Within the byte limit, the record count stops it before prost.
        let small = zstd::bulk::compress(&wire[..8 << 20], 19).unwrap();
        let err = decode(z, &small, limits(16 << 20, 50_000)).unwrap_err();
        assert_eq!(err.reason(), "too_many_records");
        let ops = crate::v1::FlowRecord {
            operations: vec![crate::v1::Operation::default(); 100_000],
            ..crate::v1::FlowRecord::default()
        };
        let b = Batch {
            flows: vec![ops],
            ..Batch::default()
        };
        let err = decode(
            Encoding::Protobuf as i32,
            &b.encode_to_vec(),
            limits(16 << 20, 10),
        );
        assert_eq!(err.unwrap_err().reason(), "oversized_field");
    }
}
