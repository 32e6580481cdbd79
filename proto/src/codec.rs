//! The batch payload codec, shared by the sensor (encodes), ingest (checks
//! what a sensor sent) and the sink (decodes what Kafka holds): a
//! `tidewatch.v1.Batch` in protobuf, optionally zstd-compressed, as named by
//! the `Encoding` beside it. Decoding is bounded: a payload that would
//! decompress beyond the caller's limit is refused, never allocated.

use prost::Message;

use crate::v1::{Batch, Encoding, UploadRequest};

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown payload encoding {0}")]
    UnknownEncoding(i32),
    #[error("zstd payload cannot be decompressed within {max} bytes: {source}")]
    Decompress { max: usize, source: std::io::Error },
    #[error("payload is not a valid Batch: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

impl CodecError {
    /// Short stable label (metrics, dead-letter reasons, refusals).
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::UnknownEncoding(_) => "bad_encoding",
            CodecError::Decompress { .. } => "bad_compression",
            CodecError::Protobuf(_) => "bad_protobuf",
        }
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

/// Decodes a payload of `encoding`, refusing one that decompresses to more
/// than `max_decoded` bytes.
pub fn decode(encoding: i32, payload: &[u8], max_decoded: usize) -> Result<Batch, CodecError> {
    match Encoding::try_from(encoding) {
        Ok(Encoding::Protobuf) => Ok(Batch::decode(payload)?),
        Ok(Encoding::ProtobufZstd) => {
            let raw = zstd::bulk::decompress(payload, max_decoded).map_err(|source| {
                CodecError::Decompress {
                    max: max_decoded,
                    source,
                }
            })?;
            Ok(Batch::decode(&raw[..])?)
        }
        _ => Err(CodecError::UnknownEncoding(encoding)),
    }
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

    #[test]
    fn round_trips_both_encodings() {
        for level in [None, Some(3)] {
            let r = encode(&batch(), level);
            assert_eq!(r.seq, 9);
            assert_eq!(decode(r.encoding, &r.payload, 1 << 20).unwrap(), batch());
        }
    }

    #[test]
    fn refuses_what_it_cannot_or_may_not_decode() {
        let z = encode(&batch(), Some(3));
        let err = decode(z.encoding, &z.payload, 10).unwrap_err();
        assert_eq!(err.reason(), "bad_compression");
        assert_eq!(decode(99, b"", 10).unwrap_err().reason(), "bad_encoding");
        let err = decode(Encoding::Protobuf as i32, &[0xff, 0xff], 10).unwrap_err();
        assert_eq!(err.reason(), "bad_protobuf");
    }
}
