//! Siemens S7 over ISO-on-TCP: TPKT (RFC 1006) + COTP data TPDU, then either
//! the classic S7comm header (protocol id 0x32) or S7comm-plus (0x72, used by
//! S7-1200/1500 with TIA Portal). COTP connection set-up alone does not name
//! the flow; the first S7 PDU does.

use std::borrow::Cow;

use tidewatch_proto::v1::OperationClass as C;

use super::{be16, identity_text, DeviceIdentity, Observer, Ops, Payload, Protocol, Roles};

/// Classic S7comm (ISO-on-TCP, port 102): a controller protocol.
pub const CLASSIC: Protocol = Protocol {
    name: "s7comm",
    tcp: Some(|p| detect(p) == Some(Variant::Classic)),
    udp: None,
    server_ports: &[102],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Controller,
    identify: Some(identify),
};

/// S7comm-plus (S7-1200/1500 with TIA Portal), same framing and port.
pub const PLUS: Protocol = Protocol {
    name: "s7comm-plus",
    tcp: Some(|p| detect(p) == Some(Variant::Plus)),
    udp: None,
    server_ports: &[102],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Controller,
    identify: None,
};

/// The S7 PDUs (after TPKT + COTP DT) of a segment, at most 65, found as
/// they are taken (detection looks at the first one only, allocating
/// nothing).
fn pdus(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = p;
    std::iter::from_fn(move || {
        while rest.len() >= 7 && rest[0] == 0x03 && rest[1] == 0x00 {
            let len = be16(rest, 2)? as usize;
            if len < 7 || len > rest.len() {
                // A TPKT continued in the next segment: take what is here.
                let seg = std::mem::take(&mut rest);
                return (len >= 7 && seg[5] == 0xF0)
                    .then(|| &seg[(5 + seg[4] as usize).min(seg.len())..]);
            }
            let (unit, next) = rest.split_at(len);
            rest = next;
            let li = unit[4] as usize;
            if unit[5] == 0xF0 && 5 + li <= len {
                return Some(&unit[5 + li..]);
            }
        }
        None
    })
    .take(65)
}

/// Which S7 protocol a PDU is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Classic,
    Plus,
}

/// `Some(variant)` when a TPKT/COTP data unit carries an S7 PDU.
pub fn detect(p: &[u8]) -> Option<Variant> {
    if p.len() < 8 || p[0] != 0x03 || p[1] != 0x00 || be16(p, 2)? as usize > p.len().max(8) + 65536
    {
        return None;
    }
    let pdu = pdus(p).next()?;
    match pdu.first()? {
        0x32 if pdu.len() >= 10 && matches!(pdu[1], 1 | 2 | 3 | 7) => Some(Variant::Classic),
        0x72 if pdu.len() >= 4 && matches!(pdu[1], 1..=3 | 0xfe) => Some(Variant::Plus),
        _ => None,
    }
}

fn function(f: u8) -> (&'static str, C) {
    match f {
        0x00 => ("cpu_services", C::Other),
        0x04 => ("read_var", C::Read),
        0x05 => ("write_var", C::Write),
        0x1a => ("request_download", C::Program),
        0x1b => ("download_block", C::Program),
        0x1c => ("download_ended", C::Program),
        0x1d => ("start_upload", C::Program),
        0x1e => ("upload", C::Program),
        0x1f => ("end_upload", C::Program),
        0x28 => ("pi_service", C::Control),
        0x29 => ("plc_stop", C::Control),
        0xf0 => ("setup_communication", C::Other),
        _ => ("unknown_function", C::Other),
    }
}

fn userdata_group(g: u8, sub: u8) -> (&'static str, C) {
    match (g, sub) {
        (1, _) => ("programmer_command", C::Control),
        (2, _) => ("cyclic_data", C::Read),
        (3, _) => ("block_function", C::Read),
        (4, 1) => ("read_szl", C::Diagnostic),
        (4, _) => ("cpu_function", C::Diagnostic),
        (5, _) => ("security", C::Other),
        (7, 1) => ("read_clock", C::Read),
        (7, 2) | (7, 4) => ("set_clock", C::Write),
        (7, _) => ("time_function", C::Other),
        _ => ("userdata", C::Other),
    }
}

fn plus_function(f: u16) -> (Cow<'static, str>, C) {
    let (n, c) = match f {
        0x04bb => ("explore", C::Read),
        0x04ca => ("create_object", C::Other),
        0x04d4 => ("delete_object", C::Other),
        0x04f2 => ("set_variable", C::Write),
        0x04fc => ("get_variable", C::Read),
        0x0524 => ("get_multi_variables", C::Read),
        0x0542 => ("set_multi_variables", C::Write),
        0x054c => ("get_var_substreamed", C::Read),
        0x0556 => ("set_var_substreamed", C::Write),
        0x0560 => ("begin_sequence", C::Other),
        0x056b => ("end_sequence", C::Other),
        0x0586 => ("get_link", C::Read),
        0x0590 => ("invoke", C::Control),
        _ => return (Cow::Owned(format!("function_{f:#06x}")), C::Other),
    };
    (Cow::Borrowed(n), c)
}

/// Counts S7 jobs by function (and their error acks), userdata by group, and
/// S7comm-plus requests by function.
pub fn observe(p: &[u8], ops: &mut Ops) {
    for pdu in pdus(p) {
        match pdu.first() {
            Some(0x32) if pdu.len() >= 10 => {
                let rosctr = pdu[1];
                let param_at = if matches!(rosctr, 2 | 3) { 12 } else { 10 };
                let Some(&f) = pdu.get(param_at) else {
                    continue;
                };
                match rosctr {
                    1 => {
                        let (n, c) = function(f);
                        ops.add(f as u32, n, c);
                    }
                    2 | 3 if pdu.get(10).is_some_and(|e| *e != 0) => {
                        let (n, c) = function(f);
                        ops.error(f as u32, n, c);
                    }
                    7 => {
                        // Userdata parameter: 00 01 12 len method type|group sub seq
                        if let (Some(tg), Some(sub)) =
                            (pdu.get(param_at + 5), pdu.get(param_at + 6))
                        {
                            // Requests only (type 4); responses are type 8.
                            if tg >> 4 == 4 {
                                let g = tg & 0x0f;
                                let (n, c) = userdata_group(g, *sub);
                                ops.add(0x700 | ((g as u32) << 4) | (*sub as u32 & 0x0f), n, c);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some(0x72) if pdu.len() >= 4 => {
                let mut at = 4;
                if pdu[1] == 3 {
                    // Integrity part: digest length + digest.
                    at += 1 + *pdu.get(4).unwrap_or(&0) as usize;
                }
                if pdu.get(at) == Some(&0x31) {
                    if let Some(f) = be16(pdu, at + 3) {
                        let (n, c) = plus_function(f);
                        ops.add(0x10000 | f as u32, n, c);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A CPU's answer to a Read SZL request (userdata, CPU functions, read
/// SZL): module identification (SZL 0x0011: order number, firmware
/// version) and component identification (SZL 0x001C: serial number,
/// module type name). S7 is Siemens' protocol and these lists are its
/// CPUs' own, so the vendor is Siemens.
pub fn identify(p: Payload<'_>) -> Option<DeviceIdentity> {
    if p.from_client {
        return None;
    }
    let mut id = DeviceIdentity::default();
    let mut module_type = String::new();
    for pdu in pdus(p.data) {
        // Header (10): 0x32, userdata (7), reserved, reference, parameter
        // and data lengths.
        if pdu.len() < 10 || pdu[0] != 0x32 || pdu[1] != 7 {
            continue;
        }
        let params = be16(pdu, 6)? as usize;
        // Parameter head 00 01 12, length, method 0x12 (response), type 8
        // and group 4 (CPU functions), subfunction 1 (read SZL).
        let param = pdu.get(10..10 + params)?;
        if param.len() < 8 || param[4] != 0x12 || param[5] != 0x84 || param[6] != 1 {
            continue;
        }
        // Data: return code 0xFF, transport size, length, SZL id, index,
        // record length, record count, records.
        let data = &pdu[10 + params..];
        if data.first() != Some(&0xFF) {
            continue;
        }
        let (Some(szl), Some(size), Some(count)) = (be16(data, 4), be16(data, 8), be16(data, 10))
        else {
            continue;
        };
        let size = size as usize;
        if size < 4 {
            continue;
        }
        let records = data[12..].chunks_exact(size).take(count as usize);
        for r in records {
            let index = be16(r, 0).unwrap_or(0);
            match (szl & 0xFF, index) {
                // Module identification: order number (20), type (2),
                // versions (2 + 2).
                (0x11, 1) => id.product = identity_text(r.get(2..22).unwrap_or_default()),
                (0x11, 7) => {
                    if let Some(v) = r.get(24..28) {
                        if v[0] == b'V' {
                            id.firmware = format!("V{}.{}.{}", v[1], v[2], v[3]);
                        }
                    }
                }
                // Component identification: text after the index (the
                // serial number 24 bytes, the module type name 32).
                (0x1C, 5) => id.serial = identity_text(text(r, 24)),
                (0x1C, 7) => module_type = identity_text(text(r, 32)),
                _ => {}
            }
        }
    }
    if id == DeviceIdentity::default() && module_type.is_empty() {
        return None;
    }
    if id.product.is_empty() {
        id.product = module_type;
    }
    id.vendor = "Siemens".to_string();
    Some(id)
}

/// `len` bytes of text after a record's index, or what there is.
fn text(r: &[u8], len: usize) -> &[u8] {
    &r[2.min(r.len())..(2 + len).min(r.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_and_plus() {
        // TPKT + COTP DT + S7 job write_var.
        let mut p = vec![0x03, 0x00, 0, 0, 0x02, 0xF0, 0x80];
        p.extend_from_slice(&[0x32, 0x01, 0, 0, 0, 1, 0, 2, 0, 0, 0x05, 0x01]);
        let l = p.len() as u16;
        p[2..4].copy_from_slice(&l.to_be_bytes());
        assert_eq!(detect(&p), Some(Variant::Classic));
        let mut ops = Ops::default();
        observe(&p, &mut ops);
        assert_eq!(ops.to_proto()[0].name, "write_var");
        // COTP connection request only: not named.
        let cr = [0x03, 0x00, 0x00, 0x0b, 0x06, 0xE0, 0, 0, 0, 1, 0];
        assert_eq!(detect(&cr), None);
        let plus = [
            0x03, 0x00, 0x00, 0x0f, 0x02, 0xF0, 0x80, 0x72, 0x01, 0x00, 0x04, 0x31, 0, 0, 0x05,
            0x42,
        ];
        let mut plus = plus.to_vec();
        plus[3] = plus.len() as u8;
        assert_eq!(detect(&plus), Some(Variant::Plus));
    }
}
