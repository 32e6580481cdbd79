//! HTTP/1.x: a request line (known method, target, `HTTP/1.x`) or a status
//! line. The Host header of requests is an indicator.

use super::{Indicators, Observer, Protocol, Roles};

/// HTTP/1: the request's Host as an indicator.
pub const PROTOCOL: Protocol = Protocol {
    name: "http",
    tcp: Some(detect),
    udp: None,
    server_ports: &[80],
    observe: Observer::Indicators(|p, ind| observe(p.data, p.from_client, ind)),
    roles: Roles::None,
};

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
];

fn first_line(p: &[u8]) -> Option<&[u8]> {
    let end = p.iter().take(2048).position(|b| *b == b'\n')?;
    Some(p[..end].strip_suffix(b"\r").unwrap_or(&p[..end]))
}

pub fn detect(p: &[u8]) -> bool {
    // Cheap first: a status line or a known method, before looking for the
    // end of the line.
    if !p.starts_with(b"HTTP/1.") && !METHODS.iter().any(|m| p.starts_with(m)) {
        return false;
    }
    let Some(line) = first_line(p) else {
        return false;
    };
    if line.starts_with(b"HTTP/1.") {
        return line.len() >= 12 && line[8] == b' ' && line[9..12].iter().all(u8::is_ascii_digit);
    }
    METHODS.iter().any(|m| line.starts_with(m))
        && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
}

pub fn observe(p: &[u8], from_client: bool, ind: &mut Indicators<'_>) {
    if !from_client || !detect(p) {
        return;
    }
    let head = &p[..p.len().min(4096)];
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.len() > 5 && line[..5].eq_ignore_ascii_case(b"host:") {
            if let Ok(h) = std::str::from_utf8(&line[5..]) {
                ind.add(h);
            }
        }
    }
}
