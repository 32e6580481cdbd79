//! HTTP/1.x: a request line (known method, target, `HTTP/1.x`) or a status
//! line. The Host header of requests is an indicator.

use super::{identity_text, DeviceIdentity, Indicators, Observer, Payload, Protocol, Roles};

/// HTTP/1: the request's Host as an indicator.
pub const PROTOCOL: Protocol = Protocol {
    name: "http",
    tcp: Some(detect),
    udp: None,
    server_ports: &[80],
    observe: Observer::Indicators(|p, ind| observe(p.data, p.from_client, ind)),
    roles: Roles::None,
    identify: Some(identify),
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

/// The value of the first header `name` (lowercase, with its colon) in
/// the head of a request or response.
fn header<'a>(p: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let head = &p[..p.len().min(4096)];
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name) {
            return Some(&line[name.len()..]);
        }
    }
    None
}

pub fn observe(p: &[u8], from_client: bool, ind: &mut Indicators<'_>) {
    if !from_client || !detect(p) {
        return;
    }
    if let Some(h) = header(p, b"host:").and_then(|h| std::str::from_utf8(h).ok()) {
        ind.add(h);
    }
}

/// A server's `Server` header (`Server: nginx/1.22.1`), as its banner.
pub fn identify(p: Payload<'_>) -> Option<DeviceIdentity> {
    if p.from_client || !p.data.starts_with(b"HTTP/1.") || !detect(p.data) {
        return None;
    }
    let server = header(p.data, b"server:")?;
    if identity_text(server).is_empty() {
        return None;
    }
    DeviceIdentity {
        software: identity_text(&[b"Server: ", server.trim_ascii()].concat()),
        ..DeviceIdentity::default()
    }
    .some()
}
