#![no_main]
//! Batch payloads as ingest receives them from a sensor: any bytes under
//! any encoding (the first input byte picks it), decoded within ingest's
//! default limits, a linked one against a link table of a few entries (one
//! of them not UTF-8). What decodes must encode again, self-contained in
//! the same layout, to a payload that decodes to the same batch.
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tidewatch_proto::codec::{decode, decode_linked, encode, DecodeLimits, Layout};
use tidewatch_proto::link::{Kept, LinkTable};

const LIMITS: DecodeLimits = DecodeLimits::INGEST;

fn table() -> &'static LinkTable {
    static TABLE: OnceLock<LinkTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut kept = Kept::default();
        for e in [&b"dns"[..], b"www.example.com", &[10, 0, 0, 1], &[0xff, 0xfe], b""] {
            kept.push(e);
        }
        let mut t = LinkTable::new(1 << 16);
        t.append(&kept);
        t
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&e, payload)) = data.split_first() else { return };
    let encoding = i32::from(e % 6);
    let Ok((batch, _)) = decode_linked(encoding, payload, LIMITS, table()) else { return };
    let layout = if encoding >= 3 { Layout::Columns } else { Layout::Protobuf };
    let again = encode(&batch, layout, Some(1));
    let back = decode(again.encoding, &again.payload, LIMITS).expect("re-encoded batch decodes");
    assert_eq!(back, batch);
});
