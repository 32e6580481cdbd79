#![no_main]
//! mqtt parser: identification over TCP and UDP, then the operation summary
//! of a flow forced to this protocol, over several payloads.
use libfuzzer_sys::fuzz_target;
use tidewatch_sensor::protocols::{detect, AppProto, AppState, OpStore};

fuzz_target!(|data: &[u8]| {
    let _ = detect(6, data);
    let _ = detect(17, data);
    for transport in [6u8, 17] {
        let mut st = AppState::default();
        let mut store = OpStore::default();
        st.proto = Some(AppProto::Mqtt);
        for chunk in data.split(|b| *b == 0xA5).take(16) {
            st.on_payload(transport, chunk, chunk.len() % 2 == 0, &mut store);
        }
        let _ = st.take_operations(&mut store);
        let _ = st.take_indicators();
    }
});
