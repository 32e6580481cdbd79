#![no_main]
//! Every protocol parser of the registry: the first byte picks the protocol
//! (in `PROTOCOLS` order), the rest is identified over TCP and UDP and then
//! fed, split into several payloads, to a flow forced to that protocol and
//! to its device identification (whose every field must stay bounded).
use libfuzzer_sys::fuzz_target;
use tidewatch_sensor::protocols::{
    detect, AppProto, AppState, OpStore, Payload, MAX_IDENTITY_LEN,
};

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
            let from_client = chunk.len() % 2 == 0;
            st.on_payload(transport, chunk, from_client, &mut store);
            let payload = Payload {
                data: chunk,
                transport,
                from_client: !from_client,
            };
            if let Some(id) = proto.protocol().identify.and_then(|f| f(payload)) {
                for field in [&id.vendor, &id.vendor_id, &id.product, &id.firmware, &id.serial, &id.software] {
                    assert!(field.len() <= MAX_IDENTITY_LEN, "{id:?}");
                    assert!(field.bytes().all(|b| (0x20..0x7f).contains(&b)), "{id:?}");
                }
            }
        }
        let _ = st.take_operations(&mut store);
        let _ = st.take_indicators();
    }
});
