//! Modbus/TCP: MBAP header (transaction id, protocol id 0, length, unit id)
//! followed by a PDU whose first byte is the function code (bit 7 set in an
//! exception response).

use tidewatch_proto::v1::OperationClass as C;

use super::{be16, identity_text, DeviceIdentity, Observer, Ops, Payload, Protocol, Roles};

/// Modbus/TCP: a controller protocol on 502.
pub const PROTOCOL: Protocol = Protocol {
    name: "modbus",
    tcp: Some(detect),
    udp: None,
    server_ports: &[502],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Controller,
    identify: Some(identify),
};

/// Splits a segment into ADUs; `None` if the MBAP framing does not hold.
fn adus(p: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        if rest.len() < 8 || be16(rest, 2)? != 0 {
            return None;
        }
        let len = be16(rest, 4)? as usize; // unit id + PDU
        if !(2..=254).contains(&len) || rest.len() < 6 + len {
            return None;
        }
        out.push(&rest[6..6 + len]);
        rest = &rest[6 + len..];
        if out.len() > 64 {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn known_function(fc: u8) -> bool {
    matches!(fc & 0x7f, 1..=8 | 11 | 12 | 15..=17 | 20..=24 | 43)
}

/// A segment made entirely of well-formed Modbus/TCP ADUs.
pub fn detect(p: &[u8]) -> bool {
    adus(p).is_some_and(|a| a.iter().all(|adu| known_function(adu[1])))
}

/// Stable name (Zeek/ICSNPP vocabulary, lowercase) and class of a function code.
pub fn function(fc: u8) -> (&'static str, C) {
    match fc {
        1 => ("read_coils", C::Read),
        2 => ("read_discrete_inputs", C::Read),
        3 => ("read_holding_registers", C::Read),
        4 => ("read_input_registers", C::Read),
        5 => ("write_single_coil", C::Write),
        6 => ("write_single_register", C::Write),
        7 => ("read_exception_status", C::Diagnostic),
        8 => ("diagnostics", C::Diagnostic),
        11 => ("get_comm_event_counter", C::Diagnostic),
        12 => ("get_comm_event_log", C::Diagnostic),
        15 => ("write_multiple_coils", C::Write),
        16 => ("write_multiple_registers", C::Write),
        17 => ("report_slave_id", C::Diagnostic),
        20 => ("read_file_record", C::Read),
        21 => ("write_file_record", C::Write),
        22 => ("mask_write_register", C::Write),
        23 => ("read_write_multiple_registers", C::Write),
        24 => ("read_fifo_queue", C::Read),
        43 => ("encap_interface_transport", C::Diagnostic),
        _ => ("unknown_function", C::Other),
    }
}

/// Counts requests and responses by function code; exceptions as errors.
/// Requests and responses both count (a poll is one of each), so analysts
/// compare classes, not raw counts, across flows.
pub fn observe(p: &[u8], ops: &mut Ops) {
    for adu in adus(p).unwrap_or_default() {
        let fc = adu[1];
        let (name, class) = function(fc & 0x7f);
        if fc & 0x80 != 0 {
            ops.error((fc & 0x7f) as u32, name, class);
        } else {
            ops.add(fc as u32, name, class);
        }
    }
}

/// A server's Read Device Identification response (function 43, MEI type
/// 14): objects VendorName (0), ProductCode (1), MajorMinorRevision (2),
/// ProductName (4), ModelName (5); the product is the most specific of
/// model, product name and product code.
pub fn identify(p: Payload<'_>) -> Option<DeviceIdentity> {
    // Cheap first: the first ADU's function code.
    if p.from_client || p.data.get(7) != Some(&0x2B) {
        return None;
    }
    let mut id = DeviceIdentity::default();
    let mut product: [&[u8]; 3] = [&[]; 3]; // model, product name, code
    for adu in adus(p.data)? {
        // unit, 43, 14, read code, conformity, more follows, next id, count
        if adu.len() < 8 || adu[1] != 0x2B || adu[2] != 0x0E {
            continue;
        }
        let mut at = 8;
        for _ in 0..adu[7] {
            let (Some(&object), Some(&len)) = (adu.get(at), adu.get(at + 1)) else {
                break;
            };
            let Some(value) = adu.get(at + 2..at + 2 + len as usize) else {
                break;
            };
            match object {
                0 => id.vendor = identity_text(value),
                1 => product[2] = value,
                2 => id.firmware = identity_text(value),
                4 => product[1] = value,
                5 => product[0] = value,
                _ => {}
            }
            at += 2 + len as usize;
        }
    }
    if let Some(text) = product
        .iter()
        .map(|v| identity_text(v))
        .find(|t| !t.is_empty())
    {
        id.product = text;
    }
    id.some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_exceptions() {
        // Two ADUs: read holding registers, write single register.
        let p = [
            0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 2, 0, 2, 0, 0, 0, 6, 1, 6, 0, 1, 0, 9,
        ];
        assert!(detect(&p));
        let mut ops = Ops::default();
        observe(&p, &mut ops);
        observe(&[0, 3, 0, 0, 0, 3, 1, 0x86, 2], &mut ops);
        let v = ops.to_proto();
        let w = v.iter().find(|o| o.code == 6).unwrap();
        assert_eq!(
            (w.name.as_str(), w.count, w.errors),
            ("write_single_register", 1, 1)
        );
        assert!(!detect(&[0, 1, 0, 1, 0, 6, 1, 3, 0, 0, 0, 2])); // protocol id 1
        assert!(!detect(&[0, 1, 0, 0, 0, 9, 1, 3, 0, 0])); // length overruns
    }
}
