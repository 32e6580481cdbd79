#![no_main]
//! pcap/pcapng reader and the whole metering pipeline on arbitrary files.
use libfuzzer_sys::fuzz_target;
use tidewatch_sensor::capture::PcapReader;
use tidewatch_sensor::decode::decode;
use tidewatch_sensor::flow::{FlowConfig, FlowTable};

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = PcapReader::new(data) else { return };
    let mut t = FlowTable::new(FlowConfig { max_flows: 64, ..FlowConfig::default() });
    for _ in 0..10_000 {
        match r.next_packet() {
            Ok(Some(p)) => {
                if let Ok(info) = decode(&p) {
                    t.process(&info);
                }
            }
            _ => break,
        }
    }
    t.flush_all();
    let _ = t.take_emitted();
});
