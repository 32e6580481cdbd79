//! OPC UA binary (UA TCP): 8-byte message header (type HEL/ACK/ERR/RHE/OPN/
//! MSG/CLO, chunk F/C/A, size). Unencrypted MSG chunks name their service by
//! the NodeId of the request's binary encoding; encrypted ones stay opaque.

use tidewatch_proto::v1::OperationClass as C;

use super::{identity_text, le16, le32, DeviceIdentity, Observer, Ops, Payload, Protocol, Roles};

/// OPC UA binary (TCP 4840).
pub const PROTOCOL: Protocol = Protocol {
    name: "opcua",
    tcp: Some(detect),
    udp: None,
    server_ports: &[4840],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Fixed {
        client: Some("ot_client"),
        server: Some("opcua_server"),
    },
    identify: Some(identify),
};

const MAX_SIZE: u32 = 16 * 1024 * 1024;

fn header(p: &[u8]) -> Option<(&[u8], u32)> {
    let t = p.get(0..3)?;
    let chunk = *p.get(3)?;
    let size = le32(p, 4)?;
    let known = matches!(
        t,
        b"HEL" | b"ACK" | b"ERR" | b"RHE" | b"OPN" | b"MSG" | b"CLO"
    );
    let chunk_ok = match t {
        b"MSG" | b"OPN" | b"CLO" => matches!(chunk, b'F' | b'C' | b'A'),
        _ => chunk == b'F',
    };
    (known && chunk_ok && (8..=MAX_SIZE).contains(&size)).then_some((t, size))
}

/// The messages starting in a segment (the last may continue in the next).
fn messages(p: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = p;
    while let Some((_, size)) = header(rest) {
        let size = size as usize;
        out.push(&rest[..size.min(rest.len())]);
        if size >= rest.len() || out.len() > 64 {
            break;
        }
        rest = &rest[size..];
    }
    out
}

/// A segment starting with a valid UA TCP header whose size is consistent
/// (exactly the segment, more messages after it, or a chunk continued later).
pub fn detect(p: &[u8]) -> bool {
    match header(p) {
        Some((t, size)) => {
            let size = size as usize;
            // Handshake messages are small and complete.
            if matches!(t, b"HEL" | b"ACK" | b"ERR" | b"RHE") {
                size <= p.len() && size <= 8192
            } else {
                true
            }
        }
        None => false,
    }
}

fn service(id: u16) -> Option<(&'static str, C)> {
    Some(match id {
        422 => ("find_servers", C::Diagnostic),
        428 => ("get_endpoints", C::Diagnostic),
        461 => ("create_session", C::Other),
        467 => ("activate_session", C::Other),
        473 => ("close_session", C::Other),
        488 => ("add_nodes", C::Program),
        500 => ("delete_nodes", C::Program),
        527 => ("browse", C::Read),
        533 => ("browse_next", C::Read),
        554 => ("translate_browse_paths", C::Read),
        560 => ("register_nodes", C::Other),
        631 => ("read", C::Read),
        664 => ("history_read", C::Read),
        673 => ("write", C::Write),
        700 => ("history_update", C::Write),
        712 => ("call", C::Control),
        751 => ("create_monitored_items", C::Read),
        787 => ("create_subscription", C::Read),
        826 => ("publish", C::Read),
        _ => return None,
    })
}

pub fn observe(p: &[u8], ops: &mut Ops) {
    for m in messages(p) {
        let Some((t, _)) = header(m) else { continue };
        match t {
            b"HEL" => ops.add(1, "hello", C::Other),
            b"OPN" => ops.add(2, "open_secure_channel", C::Other),
            b"CLO" => ops.add(3, "close_secure_channel", C::Other),
            b"ERR" => ops.error(4, "error", C::Other),
            b"MSG" if m.get(3) == Some(&b'F') => {
                // header 8, channel id 4, token id 4, sequence 4, request id 4
                let id = match m.get(24) {
                    Some(0x01) => le16(m, 26),
                    Some(0x00) => m.get(25).map(|b| *b as u16),
                    _ => None,
                };
                if let Some(id) = id {
                    if id == 397 {
                        ops.error(397, "service_fault", C::Other);
                    } else if let Some((name, class)) = service(id) {
                        ops.add(id as u32, name, class);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A reader over the OPC UA binary encoding, refusing what runs past the
/// payload.
struct Cursor<'a>(&'a [u8], usize);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let v = self.0.get(self.1..self.1.checked_add(n)?)?;
        self.1 += n;
        Some(v)
    }
    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    /// A String (length, -1 for null, then bytes).
    fn string(&mut self) -> Option<&'a [u8]> {
        match self.i32()? {
            -1 => Some(&[]),
            n if n >= 0 => self.take(n as usize),
            _ => None,
        }
    }
    /// A NodeId's numeric identifier (two-byte, four-byte or numeric
    /// encodings; the others are not read here).
    fn node_id(&mut self) -> Option<u32> {
        match self.byte()? {
            0x00 => Some(self.byte()? as u32),
            0x01 => {
                self.byte()?;
                Some(le16(self.take(2)?, 0)? as u32)
            }
            0x02 => {
                self.take(2)?;
                le32(self.take(4)?, 0)
            }
            _ => None,
        }
    }
}

/// GetEndpointsResponse, binary encoding.
const GET_ENDPOINTS_RESPONSE: u32 = 431;

/// A server's GetEndpoints response (unencrypted): the application name
/// of its first endpoint's ApplicationDescription as the product, its
/// ProductUri as software.
pub fn identify(p: Payload<'_>) -> Option<DeviceIdentity> {
    if p.from_client || !p.data.starts_with(b"MSGF") {
        return None;
    }
    // Header (8), secure channel (4), token (4), sequence (4), request (4).
    let mut c = Cursor(p.data, 24);
    if c.node_id()? != GET_ENDPOINTS_RESPONSE {
        return None;
    }
    // ResponseHeader: timestamp, handle, result, diagnostics (none),
    // string table, additional header (an ExtensionObject).
    c.take(16)?;
    if c.byte()? != 0 {
        return None;
    }
    for _ in 0..c.i32()?.clamp(0, 64) {
        c.string()?;
    }
    c.node_id()?;
    if c.byte()? & 1 != 0 {
        c.string()?;
    }
    if c.i32()? < 1 {
        return None;
    }
    // EndpointDescription: url, then the server's ApplicationDescription:
    // ApplicationUri, ProductUri, ApplicationName (a LocalizedText).
    c.string()?;
    c.string()?;
    let product_uri = c.string()?;
    let mask = c.byte()?;
    if mask & 1 != 0 {
        c.string()?;
    }
    let name = if mask & 2 != 0 { c.string()? } else { &[] };
    DeviceIdentity {
        product: identity_text(name),
        software: if identity_text(product_uri).is_empty() {
            String::new()
        } else {
            identity_text(&[b"ProductUri ", product_uri].concat())
        },
        ..DeviceIdentity::default()
    }
    .some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_write_request() {
        let mut hel = b"HELF".to_vec();
        hel.extend_from_slice(&32u32.to_le_bytes());
        hel.resize(32, 0);
        assert!(detect(&hel));
        let mut msg = b"MSGF".to_vec();
        msg.extend_from_slice(&40u32.to_le_bytes());
        msg.extend_from_slice(&[0u8; 16]);
        msg.extend_from_slice(&[0x01, 0x00]);
        msg.extend_from_slice(&673u16.to_le_bytes());
        msg.resize(40, 0);
        let mut ops = Ops::default();
        observe(&msg, &mut ops);
        assert_eq!(ops.to_proto()[0].name, "write");
        assert!(!detect(b"GET / HTTP/1.1\r\n"));
    }
}
