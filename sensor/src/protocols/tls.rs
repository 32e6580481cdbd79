//! TLS: a handshake record (type 22, version 3.x, bounded length) starting
//! with a ClientHello or ServerHello. The SNI of a ClientHello is an indicator.

use super::{be16, Indicators, Observer, Protocol, Roles};

/// TLS: the ClientHello's SNI as an indicator (443, and MQTT over TLS
/// on 8883).
pub const PROTOCOL: Protocol = Protocol {
    name: "tls",
    tcp: Some(detect),
    udp: None,
    server_ports: &[443, 8883],
    observe: Observer::Indicators(|p, ind| observe(p.data, ind)),
    roles: Roles::None,
    identify: None,
};

pub fn detect(p: &[u8]) -> bool {
    p.len() >= 9
        && p[0] == 22
        && p[1] == 3
        && p[2] <= 4
        && be16(p, 3).is_some_and(|l| (4..=18432).contains(&l))
        && matches!(p[5], 1 | 2)
}

/// The server name from a ClientHello, if present.
fn sni(p: &[u8]) -> Option<&str> {
    if !detect(p) || p[5] != 1 {
        return None;
    }
    // record(5) + handshake header(4) + version(2) + random(32)
    let mut at = 5 + 4 + 2 + 32;
    at += 1 + *p.get(at)? as usize; // session id
    at += 2 + be16(p, at)? as usize; // cipher suites
    at += 1 + *p.get(at)? as usize; // compression methods
    let ext_end = (at + 2 + be16(p, at)? as usize).min(p.len());
    at += 2;
    while at + 4 <= ext_end {
        let t = be16(p, at)?;
        let l = be16(p, at + 2)? as usize;
        if t == 0 {
            // server_name list: len(2) type(1) name len(2) name
            let n = be16(p, at + 7)? as usize;
            let name = p.get(at + 9..at + 9 + n)?;
            return std::str::from_utf8(name).ok();
        }
        at += 4 + l;
    }
    None
}

pub fn observe(p: &[u8], ind: &mut Indicators<'_>) {
    if let Some(name) = sni(p) {
        ind.add(name);
    }
}
