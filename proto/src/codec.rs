//! The batch payload codec, shared by the sensor (encodes), ingest (checks
//! what a sensor sent) and the sink (decodes what Kafka holds): a
//! `tidewatch.v1.Batch` as protobuf or in columns ([`crate::columns`]),
//! optionally zstd-compressed, as named by the `Encoding` beside it. Every
//! reader accepts every encoding, so sensors of a fleet can move from one
//! to the other at their own pace. Decoding is bounded: a payload that would
//! decompress beyond the caller's limit is refused once past it (memory
//! grows with what is actually decompressed), and one whose records,
//! nested lists or strings exceed the [`crate::limits`] is refused before
//! any of it is materialised.

use std::io::Read;

use prost::Message;

use crate::columns::{self, ColumnsError};
use crate::limits::{check_shape, ShapeError};
use crate::link::{Kept, LinkEncoder, LinkTable};
use crate::v1::{Batch, Encoding, UploadRequest};

/// How much a decoded payload may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Bytes after decompression.
    pub max_decoded_bytes: usize,
    /// Records (flows, assets and statuses together).
    pub max_records: usize,
}

impl DecodeLimits {
    /// Ingest's defaults (`--max-decoded-bytes`, `--max-batch-records`).
    pub const INGEST: DecodeLimits = DecodeLimits {
        max_decoded_bytes: 16 * 1024 * 1024,
        max_records: 50_000,
    };
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown payload encoding {0}")]
    UnknownEncoding(i32),
    #[error("zstd payload cannot be decompressed: {0}")]
    Decompress(std::io::Error),
    #[error(
        "payload expands to more than {max} bytes (decompressed, or strings copied into records)"
    )]
    TooLarge { max: usize },
    #[error("payload is not a valid Batch: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("payload refused before decoding: {0}")]
    Shape(#[from] ShapeError),
    #[error("columnar payload is not valid: {0}")]
    Columns(ColumnsError),
    #[error("a linked payload refers to its upload stream's link table, which only ingest holds")]
    NeedsLinkTable,
}

impl From<ColumnsError> for CodecError {
    fn from(e: ColumnsError) -> Self {
        match e {
            ColumnsError::Shape(s) => CodecError::Shape(s),
            ColumnsError::TooLarge { max } => CodecError::TooLarge { max },
            e => CodecError::Columns(e),
        }
    }
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
            CodecError::Columns(_) | CodecError::NeedsLinkTable => "bad_columns",
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

/// Every payload encoding, by its metrics label. Every reader takes the
/// first four; the linked one is on the link only, read by ingest with the
/// upload stream's link table ([`decode_linked`]).
pub const ENCODINGS: [(Encoding, &str); 5] = [
    (Encoding::Protobuf, "protobuf"),
    (Encoding::ProtobufZstd, "protobuf_zstd"),
    (Encoding::Columns, "columns"),
    (Encoding::ColumnsZstd, "columns_zstd"),
    (Encoding::ColumnsLinkedZstd, "columns_linked_zstd"),
];

/// The metrics label of an encoding (`unknown` for one no reader takes).
pub fn encoding_label(encoding: i32) -> &'static str {
    ENCODINGS
        .iter()
        .find(|(e, _)| *e as i32 == encoding)
        .map_or("unknown", |(_, l)| l)
}

/// How a batch is laid out in its payload, before any compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// The `Batch` message as protobuf (every reader since the first).
    Protobuf,
    /// The batch's flows in columns ([`crate::columns`]): fewer bytes.
    #[default]
    Columns,
}

impl Layout {
    /// The encoding of a payload in this layout, compressed or not.
    pub fn encoding(self, compressed: bool) -> Encoding {
        match (self, compressed) {
            (Layout::Protobuf, false) => Encoding::Protobuf,
            (Layout::Protobuf, true) => Encoding::ProtobufZstd,
            (Layout::Columns, false) => Encoding::Columns,
            (Layout::Columns, true) => Encoding::ColumnsZstd,
        }
    }
}

/// Encodes `batch` as an upload request in `layout`: zstd at `zstd_level`
/// when given (uncompressed should compression fail), uncompressed
/// otherwise.
pub fn encode(batch: &Batch, layout: Layout, zstd_level: Option<i32>) -> UploadRequest {
    let (compressed, payload) = match layout {
        // Each column compressed on its own, where that makes it smaller.
        Layout::Columns => (zstd_level.is_some(), columns::encode(batch, zstd_level)),
        Layout::Protobuf => {
            let raw = batch.encode_to_vec();
            match zstd_level.map(|l| zstd::bulk::compress(&raw, l)) {
                Some(Ok(z)) => (true, z),
                _ => (false, raw),
            }
        }
    };
    let encoding = layout.encoding(compressed);
    UploadRequest {
        seq: batch.seq,
        encoding: encoding as i32,
        payload,
    }
}

/// `request` (a sealed batch) as the link carries it on a stream with a
/// link table: a compressed columnar batch linked to `link`, with the
/// entries it marked to keep. `None` for any other encoding, or if the
/// sealed payload does not decode: then it goes as it is.
pub fn encode_linked(
    request: &UploadRequest,
    link: &mut LinkEncoder,
) -> Option<(UploadRequest, Kept)> {
    // Compressed columns only (`--no-compress` sends batches as sealed).
    if request.encoding != Encoding::ColumnsZstd as i32 {
        return None;
    }
    // The sensor's own batch: far looser limits than any collector's.
    let own = DecodeLimits {
        max_decoded_bytes: 64 << 20,
        max_records: usize::MAX,
    };
    let batch = decode(request.encoding, &request.payload, own).ok()?;
    let (payload, kept) = columns::encode_linked(&batch, crate::link::ZSTD_LEVEL, link);
    let linked = UploadRequest {
        seq: request.seq,
        encoding: Encoding::ColumnsLinkedZstd as i32,
        payload,
    };
    Some((linked, kept))
}

/// Decodes a payload of `encoding` within `limits`, a linked one with its
/// stream's `link` table; with the entries a linked batch marked to keep
/// (none for the others).
pub fn decode_linked(
    encoding: i32,
    payload: &[u8],
    limits: DecodeLimits,
    link: &LinkTable,
) -> Result<(Batch, Kept), CodecError> {
    if encoding != Encoding::ColumnsLinkedZstd as i32 {
        return decode(encoding, payload, limits).map(|b| (b, Kept::default()));
    }
    Ok(columns::decode_linked(
        payload,
        limits.max_records,
        limits.max_decoded_bytes,
        link,
    )?)
}

/// Decodes a payload of `encoding` within `limits` (see the module docs).
pub fn decode(encoding: i32, payload: &[u8], limits: DecodeLimits) -> Result<Batch, CodecError> {
    let encoding = Encoding::try_from(encoding)
        .ok()
        .filter(|e| *e != Encoding::Unspecified)
        .ok_or(CodecError::UnknownEncoding(encoding))?;
    let raw;
    let wire = match encoding {
        Encoding::ColumnsLinkedZstd => return Err(CodecError::NeedsLinkTable),
        Encoding::Columns | Encoding::ColumnsZstd => {
            return Ok(columns::decode(
                payload,
                encoding == Encoding::ColumnsZstd,
                limits.max_records,
                limits.max_decoded_bytes,
            )?);
        }
        Encoding::ProtobufZstd => {
            raw = decompress(payload, limits.max_decoded_bytes)?;
            &raw[..]
        }
        _ => payload,
    };
    check_shape(wire, limits.max_records)?;
    Ok(Batch::decode(wire)?)
}

/// The zstd frame(s) in `payload`, refused once past `max` bytes.
///
/// Each thread keeps one decompression context for every call: a columnar
/// batch is a dozen frames, and making a context for each (a large
/// allocation cleared each time) was a sixth of the sink's time.
pub(crate) fn decompress(payload: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        let context = match &mut *c {
            Some(context) => context,
            none => none.insert(zstd::zstd_safe::DCtx::try_create().ok_or_else(|| {
                CodecError::Decompress(std::io::Error::other("cannot allocate a zstd context"))
            })?),
        };
        // The context's session is reset by the decoder first, so a frame
        // a previous call left unfinished (an error) does not carry over.
        let decoder = zstd::stream::read::Decoder::with_context(payload, context);
        let mut out = Vec::with_capacity(payload.len().saturating_mul(4).min(max));
        decoder
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(CodecError::Decompress)?;
        if out.len() > max {
            return Err(CodecError::TooLarge { max });
        }
        Ok(out)
    })
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

    const LAYOUTS: [Layout; 2] = [Layout::Protobuf, Layout::Columns];

    #[test]
    fn round_trips_every_encoding() {
        let mut seen = Vec::new();
        for layout in LAYOUTS {
            for level in [None, Some(3)] {
                let r = encode(&batch(), layout, level);
                assert_eq!(r.seq, 9);
                assert_eq!(r.encoding, layout.encoding(level.is_some()) as i32);
                seen.push(r.encoding);
                assert_eq!(
                    decode(r.encoding, &r.payload, limits(1 << 20, 100)).unwrap(),
                    batch()
                );
            }
        }
        seen.sort();
        assert_eq!(seen, [1, 2, 3, 4]);
        let labels: Vec<&str> = seen.iter().map(|e| encoding_label(*e)).collect();
        assert_eq!(
            labels,
            ["protobuf", "protobuf_zstd", "columns", "columns_zstd"]
        );
        assert_eq!(encoding_label(0), "unknown");
    }

    #[test]
    fn refuses_what_it_cannot_or_may_not_decode() {
        for layout in LAYOUTS {
            let z = encode(&batch(), layout, Some(3));
            let err = decode(z.encoding, &z.payload, limits(10, 100)).unwrap_err();
            assert_eq!(err.reason(), "decompressed_too_large");
            assert!(err.is_size());
            let err = decode(z.encoding, &z.payload, limits(1 << 20, 99)).unwrap_err();
            assert_eq!(err.reason(), "too_many_records", "{layout:?}");
            assert!(err.is_size());
        }
        let err = decode(Encoding::Columns as i32, &[9, 0, 0], limits(10, 1)).unwrap_err();
        assert_eq!(err.reason(), "bad_columns");
        assert!(!err.is_size());
        let z = Encoding::ProtobufZstd as i32;
        let err = decode(z, b"not zstd", limits(10, 100)).unwrap_err();
        assert_eq!(err.reason(), "bad_compression");
        let err = decode(Encoding::ColumnsLinkedZstd as i32, b"", limits(10, 1)).unwrap_err();
        assert!(matches!(err, CodecError::NeedsLinkTable), "{err}");
        for unknown in [0, 6, 99] {
            assert_eq!(
                decode(unknown, b"", limits(10, 1)).unwrap_err().reason(),
                "bad_encoding"
            );
        }
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

    #[test]
    fn a_frame_left_unfinished_does_not_carry_into_the_next_payload() {
        // The thread's one context: a bomb stopped at the limit, a frame cut
        // short and garbage each leave it mid-frame; the next payload
        // decodes alone, as with a fresh context.
        let good = zstd::bulk::compress(b"the next payload", 3).unwrap();
        let bomb = zstd::bulk::compress(&[7u8; 1 << 20], 19).unwrap();
        let cut = &zstd::bulk::compress(&[9u8; 100_000], 1).unwrap()[..20];
        for bad in [&bomb[..], cut, &[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff][..]] {
            assert!(decompress(bad, 1000).is_err());
            assert_eq!(decompress(&good, 1000).unwrap(), b"the next payload");
        }
    }
}
