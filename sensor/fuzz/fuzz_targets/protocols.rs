#![no_main]
//! Every protocol parser of the registry: the first byte picks the protocol
//! (in `PROTOCOLS` order), the rest is identified over TCP and UDP and then
//! fed, split into several payloads, to a flow forced to that protocol.
use libfuzzer_sys::fuzz_target;
use tidewatch_sensor::protocols::{detect, AppProto, AppState, OpStore};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else { return };
    let all: Vec<AppProto> = AppProto::all().collect();
    let proto = all[pick as usize % all.len()];
    let _ = detect(6, data);
    let _ = detect(17, data);
    for transport in [6u8, 17] {
        let mut st = AppState::default();
        let mut store = OpStore::default();
        st.proto = Some(proto);
        for chunk in data.split(|b| *b == 0xA5).take(16) {
            st.on_payload(transport, chunk, chunk.len() % 2 == 0, &mut store);
        }
        let _ = st.take_operations(&mut store);
        let _ = st.take_indicators();
    }
});
