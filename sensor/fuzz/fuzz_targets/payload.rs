#![no_main]
//! Batch payloads as ingest receives them from a sensor: any bytes under
//! any encoding (the first input byte picks it), decoded within ingest's
//! default limits. What decodes must encode again, in the same layout, to
//! a payload that decodes to the same batch.
use libfuzzer_sys::fuzz_target;
use tidewatch_proto::codec::{decode, encode, DecodeLimits, Layout};

const LIMITS: DecodeLimits = DecodeLimits {
    max_decoded_bytes: 16 << 20,
    max_records: 50_000,
};

fuzz_target!(|data: &[u8]| {
    let Some((&e, payload)) = data.split_first() else { return };
    let encoding = i32::from(e % 6);
    let Ok(batch) = decode(encoding, payload, LIMITS) else { return };
    let layout = if encoding >= 3 { Layout::Columns } else { Layout::Protobuf };
    let again = encode(&batch, layout, Some(1));
    let back = decode(again.encoding, &again.payload, LIMITS).expect("re-encoded batch decodes");
    assert_eq!(back, batch);
});
