//! EtherNet/IP: the 24-byte encapsulation header (command, length, session,
//! status, context, options) over TCP or UDP 44818, carrying CIP messages in
//! Common Packet Format items; and CIP implicit I/O over UDP (2222), which is
//! CPF items alone (sequenced address + connected data).

use tidewatch_proto::v1::OperationClass as C;

use super::{identity_text, le16, le32, DeviceIdentity, Observer, Ops, Payload, Protocol, Roles};

/// EtherNet/IP with CIP: explicit messaging on TCP/UDP 44818, implicit
/// I/O on UDP 2222; a controller protocol.
pub const PROTOCOL: Protocol = Protocol {
    name: "enip",
    tcp: Some(detect_tcp),
    udp: Some(detect_udp),
    server_ports: &[44818, 2222],
    observe: Observer::Operations(|p, ops| observe(p.data, p.transport, ops)),
    roles: Roles::Controller,
    identify: Some(identify),
};

const COMMANDS: &[u16] = &[
    0x0001, 0x0004, 0x0063, 0x0064, 0x0065, 0x0066, 0x006F, 0x0070,
];

/// Encapsulation units of a segment; `None` if the framing does not hold.
fn units(p: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        if rest.len() < 24 || !COMMANDS.contains(&le16(rest, 0)?) || le32(rest, 20)? != 0 {
            return None;
        }
        let len = le16(rest, 2)? as usize;
        if rest.len() < 24 + len {
            return None;
        }
        out.push(&rest[..24 + len]);
        rest = &rest[24 + len..];
        if out.len() > 32 {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// CPF items (type, data) exactly covering `p`.
fn cpf(p: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let n = le16(p, 0)? as usize;
    if n == 0 || n > 8 {
        return None;
    }
    let mut at = 2;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let t = le16(p, at)?;
        let l = le16(p, at + 2)? as usize;
        let d = p.get(at + 4..at + 4 + l)?;
        items.push((t, d));
        at += 4 + l;
    }
    (at == p.len()).then_some(items)
}

pub fn detect_tcp(p: &[u8]) -> bool {
    units(p).is_some()
}

/// Encapsulation over UDP (ListIdentity etc.) or CIP implicit I/O.
pub fn detect_udp(p: &[u8]) -> bool {
    units(p).is_some()
        || cpf(p).is_some_and(|items| {
            items.iter().any(|(t, _)| *t == 0x8002) && items.iter().any(|(t, _)| *t == 0x00B1)
        })
}

fn command(c: u16) -> (&'static str, C) {
    match c {
        0x0001 => ("nop", C::Other),
        0x0004 => ("list_services", C::Diagnostic),
        0x0063 => ("list_identity", C::Diagnostic),
        0x0064 => ("list_interfaces", C::Diagnostic),
        0x0065 => ("register_session", C::Other),
        0x0066 => ("unregister_session", C::Other),
        0x006F => ("send_rr_data", C::Other),
        0x0070 => ("send_unit_data", C::Other),
        _ => ("unknown_command", C::Other),
    }
}

/// Name and class of a CIP service code (request form, bit 7 clear).
pub fn cip_service(s: u8) -> (&'static str, C) {
    match s {
        0x01 => ("get_attributes_all", C::Read),
        0x02 => ("set_attributes_all", C::Write),
        0x03 => ("get_attribute_list", C::Read),
        0x04 => ("set_attribute_list", C::Write),
        0x05 => ("reset", C::Control),
        0x06 => ("start", C::Control),
        0x07 => ("stop", C::Control),
        0x08 => ("create", C::Other),
        0x09 => ("delete", C::Other),
        0x0A => ("multiple_service_packet", C::Other),
        0x0D => ("apply_attributes", C::Write),
        0x0E => ("get_attribute_single", C::Read),
        0x10 => ("set_attribute_single", C::Write),
        0x11 => ("find_next_object_instance", C::Read),
        0x15 => ("restore", C::Program),
        0x16 => ("save", C::Program),
        0x18 => ("get_member", C::Read),
        0x19 => ("set_member", C::Write),
        0x4B => ("execute_pccc", C::Other),
        0x4C => ("read_tag", C::Read),
        0x4D => ("write_tag", C::Write),
        0x4E => ("forward_close", C::Other),
        0x52 => ("unconnected_send", C::Other),
        0x53 => ("write_tag_fragmented", C::Write),
        0x54 => ("forward_open", C::Other),
        0x5B => ("large_forward_open", C::Other),
        _ => ("unknown_service", C::Other),
    }
}

/// One CIP message: requests count, error responses count as errors.
/// Multiple-service packets and Unconnected Send count their embedded
/// services too (the target's reply is the embedded service's reply).
fn cip(m: &[u8], ops: &mut Ops, depth: u8) {
    let Some(&svc) = m.first() else { return };
    let code = svc & 0x7f;
    let (name, class) = cip_service(code);
    if svc & 0x80 != 0 {
        if m.get(2).is_some_and(|st| *st != 0) {
            ops.error(0x100 | code as u32, name, class);
        }
        return;
    }
    ops.add(0x100 | code as u32, name, class);
    if code == 0x52 && depth == 0 {
        // Request path, priority/tick (1), timeout ticks (1), embedded
        // message size (u16), the embedded message request.
        let path_words = *m.get(1).unwrap_or(&0) as usize;
        let at = 2 + 2 * path_words + 2;
        if let Some(size) = le16(m, at) {
            if let Some(sub) = m.get(at + 2..at + 2 + size as usize) {
                cip(sub, ops, depth + 1);
            }
        }
    }
    if code == 0x0A && depth == 0 {
        // Request path then: count (u16), offsets (u16 each) from the count.
        let path_words = *m.get(1).unwrap_or(&0) as usize;
        let body = &m[(2 + 2 * path_words).min(m.len())..];
        let n = le16(body, 0).unwrap_or(0).min(32) as usize;
        for i in 0..n {
            let Some(off) = le16(body, 2 + 2 * i) else {
                break;
            };
            let end = le16(body, 4 + 2 * i)
                .map(|e| e as usize)
                .filter(|_| i + 1 < n)
                .unwrap_or(body.len());
            if let Some(sub) = body.get(off as usize..end.min(body.len())) {
                cip(sub, ops, depth + 1);
            }
        }
    }
}

pub fn observe(p: &[u8], transport: u8, ops: &mut Ops) {
    if let Some(us) = units(p) {
        for u in us {
            let c = le16(u, 0).unwrap_or(0);
            let (name, class) = command(c);
            ops.add(c as u32, name, class);
            if matches!(c, 0x006F | 0x0070) {
                // interface handle (4) + timeout (2), then CPF.
                for (t, d) in cpf(&u[24 + 6.min(u.len() - 24)..]).unwrap_or_default() {
                    match t {
                        0x00B2 => cip(d, ops, 0),
                        0x00B1 if d.len() > 2 => cip(&d[2..], ops, 0),
                        _ => {}
                    }
                }
            }
        }
    } else if transport == 17 && cpf(p).is_some() {
        ops.add(0x00B1, "cyclic_io", C::Read);
    }
}

/// A ListIdentity reply (command 0x63 with a CIP Identity item, type 0x0C):
/// vendor id, product name, revision major.minor and serial number, as a
/// device answers a broadcast or a direct request. The vendor is named by
/// its ODVA vendor id ("CIP vendor 1").
pub fn identify(p: Payload<'_>) -> Option<DeviceIdentity> {
    if p.from_client || le16(p.data, 0) != Some(0x0063) {
        return None;
    }
    for unit in units(p.data)? {
        if le16(unit, 0) != Some(0x0063) || unit.len() <= 24 {
            continue;
        }
        for (kind, d) in cpf(&unit[24..]).unwrap_or_default() {
            // version (2), socket address (16), vendor, device type,
            // product code, revision (2), status, serial (4), name.
            if kind != 0x000C {
                continue;
            }
            let (Some(vendor), Some(code), Some(serial), Some(&n)) =
                (le16(d, 18), le16(d, 22), le32(d, 28), d.get(32))
            else {
                continue;
            };
            let (Some(&major), Some(&minor)) = (d.get(24), d.get(25)) else {
                continue;
            };
            let name = d
                .get(33..33 + n as usize)
                .map(identity_text)
                .unwrap_or_default();
            return Some(DeviceIdentity {
                vendor: String::new(),
                vendor_id: format!("CIP vendor {vendor}"),
                product: if name.is_empty() {
                    format!("CIP product code {code}")
                } else {
                    name
                },
                firmware: format!("{major}.{minor}"),
                serial: format!("0x{serial:08x}"),
                software: String::new(),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconnected_send_counts_its_embedded_service() {
        // Unconnected Send to the Connection Manager (path 20 06 24 01),
        // tick/timeout, embedded Write Tag (0x4D) of 6 bytes, route path.
        let mut m = vec![0x52, 0x02, 0x20, 0x06, 0x24, 0x01, 0x0a, 0xf0, 0x06, 0x00];
        m.extend_from_slice(&[0x4d, 0x02, 0x91, 0x01, 0x41, 0x00]);
        m.extend_from_slice(&[0x01, 0x00, 0x01, 0x00]);
        let mut ops = Ops::default();
        cip(&m, &mut ops, 0);
        let names: Vec<String> = ops.to_proto().into_iter().map(|o| o.name).collect();
        assert_eq!(names, ["write_tag", "unconnected_send"]);
    }

    #[test]
    fn encapsulation_with_cip_set_attribute() {
        let cip_msg = [0x10, 0x03, 0x20, 0x01, 0x24, 0x01, 0x30, 0x05, 0x01];
        let mut body = vec![0, 0, 0, 0, 0, 0]; // interface handle, timeout
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]); // null address item
        body.extend_from_slice(&0xB2u16.to_le_bytes());
        body.extend_from_slice(&(cip_msg.len() as u16).to_le_bytes());
        body.extend_from_slice(&cip_msg);
        let mut p = Vec::new();
        p.extend_from_slice(&0x6Fu16.to_le_bytes());
        p.extend_from_slice(&(body.len() as u16).to_le_bytes());
        p.extend_from_slice(&[0u8; 20]);
        p.extend_from_slice(&body);
        assert!(detect_tcp(&p));
        let mut ops = Ops::default();
        observe(&p, 6, &mut ops);
        let names: Vec<String> = ops.to_proto().into_iter().map(|o| o.name).collect();
        assert_eq!(names, vec!["send_rr_data", "set_attribute_single"]);
        p[20] = 1; // options must be zero
        assert!(!detect_tcp(&p));
    }
}
