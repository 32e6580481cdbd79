//! MQTT: identified from the CONNECT packet (type 1, remaining length,
//! protocol name "MQTT" or "MQIsdp") or a CONNACK (0x20 0x02).

use tidewatch_proto::v1::OperationClass as C;

use super::{be16, Observer, Ops, Protocol, Roles};

/// MQTT (TCP 1883; on 8883 it is inside TLS and named `tls`).
pub const PROTOCOL: Protocol = Protocol {
    name: "mqtt",
    tcp: Some(detect),
    udp: None,
    server_ports: &[1883, 8883],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::None,
    identify: None,
};

fn remaining_len(p: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for i in 0..4 {
        let b = *p.get(1 + i)?;
        v |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, 2 + i));
        }
    }
    None
}

pub fn detect(p: &[u8]) -> bool {
    if p.len() == 4 && p[0] == 0x20 && p[1] == 0x02 {
        return true;
    }
    if p.first() != Some(&0x10) {
        return false;
    }
    let Some((len, at)) = remaining_len(p) else {
        return false;
    };
    if at + len != p.len() {
        return false;
    }
    match be16(p, at) {
        Some(4) => p.get(at + 2..at + 6) == Some(b"MQTT"),
        Some(6) => p.get(at + 2..at + 8) == Some(b"MQIsdp"),
        _ => false,
    }
}

/// Counts control packets by type (PUBLISH is a write towards the broker).
pub fn observe(p: &[u8], ops: &mut Ops) {
    let Some(&b) = p.first() else { return };
    let (name, class) = match b >> 4 {
        1 => ("connect", C::Other),
        2 => ("connack", C::Other),
        3 => ("publish", C::Write),
        8 => ("subscribe", C::Read),
        10 => ("unsubscribe", C::Other),
        12 => ("pingreq", C::Diagnostic),
        14 => ("disconnect", C::Other),
        _ => return,
    };
    ops.add((b >> 4) as u32, name, class);
}
