//! DNS over UDP (and TCP with its 2-byte length prefix): a 12-byte header
//! with a plausible opcode and counts, and a question whose name parses to
//! the end with a sane type and class. Query names become indicators.

use super::{be16, Indicators, Observer, Protocol, Roles};

/// DNS over UDP or TCP (53; mDNS on 5353): query names as indicators.
pub const PROTOCOL: Protocol = Protocol {
    name: "dns",
    tcp: Some(detect_tcp),
    udp: Some(detect),
    server_ports: &[53, 5353],
    observe: Observer::Indicators(|p, ind| observe(p.data, p.transport, ind)),
    roles: Roles::None,
    identify: None,
};

/// Parses the first question: (name, offset after qtype/qclass).
fn question(p: &[u8]) -> Option<(String, u16, u16)> {
    if p.len() < 17 {
        return None;
    }
    let flags = be16(p, 2)?;
    let opcode = (flags >> 11) & 0x0f;
    let qd = be16(p, 4)?;
    if opcode > 5
        || qd == 0
        || qd > 4
        || be16(p, 6)? > 256
        || be16(p, 8)? > 256
        || be16(p, 10)? > 256
    {
        return None;
    }
    let mut at = 12;
    let mut name = String::new();
    loop {
        let l = *p.get(at)? as usize;
        if l == 0 {
            at += 1;
            break;
        }
        if l > 63 || name.len() + l > 253 {
            return None;
        }
        let label = p.get(at + 1..at + 1 + l)?;
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
        {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(std::str::from_utf8(label).ok()?);
        at += 1 + l;
    }
    let qtype = be16(p, at)?;
    let qclass = be16(p, at + 2)? & 0x7fff; // mDNS unicast-response bit
    (qtype != 0 && matches!(qclass, 1 | 3 | 4 | 255)).then_some((name, qtype, qclass))
}

pub fn detect(p: &[u8]) -> bool {
    question(p).is_some()
}

pub fn detect_tcp(p: &[u8]) -> bool {
    be16(p, 0).is_some_and(|l| l as usize == p.len() - 2) && detect(&p[2..])
}

pub fn observe(p: &[u8], transport: u8, ind: &mut Indicators<'_>) {
    let msg = if transport == 6 {
        p.get(2..).unwrap_or(&[])
    } else {
        p
    };
    // Queries only (QR bit clear): the name the client asked for.
    if be16(msg, 2).is_some_and(|f| f & 0x8000 == 0) {
        if let Some((name, _, _)) = question(msg) {
            ind.add(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_name() {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in ["updates", "example", "org"] {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(detect(&q));
        let mut v = Vec::new();
        observe(&q, 17, &mut Indicators(&mut v));
        assert_eq!(v, vec!["updates.example.org"]);
        assert!(!detect(&[0u8; 40]));
    }
}
