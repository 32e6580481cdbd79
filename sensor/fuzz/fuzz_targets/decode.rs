#![no_main]
//! Packet decoder: any bytes under any supported link type.
use libfuzzer_sys::fuzz_target;
use tidewatch_sensor::capture::RawPacket;
use tidewatch_sensor::decode::{arp_sender, decode, src_mac};

fuzz_target!(|data: &[u8]| {
    let Some((&lt, rest)) = data.split_first() else { return };
    let linktype = [0u32, 1, 12, 14, 101, 108, 113, 228, 229, 276][lt as usize % 10];
    let pkt = RawPacket { ts_ns: 0, linktype, orig_len: rest.len() as u32, data: rest };
    let _ = decode(&pkt);
    let _ = arp_sender(&pkt);
    let _ = src_mac(&pkt);
});
