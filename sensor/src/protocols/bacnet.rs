//! BACnet/IP: BVLC header (type 0x81, function, length = datagram length),
//! NPDU (version 1, control, optional network addresses), then an APDU whose
//! type and service choice give the operation.

use tidewatch_proto::v1::OperationClass as C;

use super::{be16, identity_text, DeviceIdentity, Observer, Ops, Payload, Protocol, Roles};

/// BACnet/IP (UDP 47808): devices talk to each other, both ends are
/// `bacnet_device`s.
pub const PROTOCOL: Protocol = Protocol {
    name: "bacnet",
    tcp: None,
    udp: Some(detect),
    server_ports: &[47808],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Fixed {
        client: Some("bacnet_device"),
        server: Some("bacnet_device"),
    },
    identify: Some(identify),
};

/// The NPDU of a BVLC datagram, if it has one; `None` if BVLC is invalid.
///
/// Some devices write a BVLC length that disagrees with the datagram (the
/// reference corpus has both shorter and longer ones, which tshark and Zeek
/// accept), so for NPDU-carrying functions the NPDU version byte is checked
/// instead; the other functions must match the datagram length exactly.
fn npdu(p: &[u8]) -> Option<Option<&[u8]>> {
    if p.len() < 4 || p[0] != 0x81 || p[1] > 0x0C || be16(p, 2)? < 4 {
        return None;
    }
    let at = match p[1] {
        0x04 => 10,
        0x09..=0x0B => 4,
        _ => return (be16(p, 2)? as usize == p.len()).then_some(None),
    };
    let n = p.get(at..)?;
    (n.len() >= 2 && n[0] == 0x01).then_some(Some(n))
}

/// The APDU of an NPDU (`None` for network-layer messages or bad NPDUs).
fn apdu(n: &[u8]) -> Option<&[u8]> {
    if n.len() < 2 || n[0] != 0x01 {
        return None;
    }
    let ctl = n[1];
    let mut at = 2;
    if ctl & 0x20 != 0 {
        let dlen = *n.get(at + 2)? as usize;
        at += 3 + dlen;
    }
    if ctl & 0x08 != 0 {
        let slen = *n.get(at + 2)? as usize;
        at += 3 + slen;
    }
    if ctl & 0x20 != 0 {
        at += 1; // hop count
    }
    if ctl & 0x80 != 0 {
        return None;
    }
    n.get(at..).filter(|a| !a.is_empty())
}

/// Valid BVLC framing with a version-1 NPDU where one is expected.
pub fn detect(p: &[u8]) -> bool {
    npdu(p).is_some()
}

fn confirmed(s: u8) -> (&'static str, C) {
    match s {
        0 => ("acknowledge_alarm", C::Write),
        1 => ("confirmed_cov_notification", C::Read),
        2 => ("confirmed_event_notification", C::Read),
        3 => ("get_alarm_summary", C::Read),
        4 => ("get_enrollment_summary", C::Read),
        5 => ("subscribe_cov", C::Read),
        6 => ("atomic_read_file", C::Read),
        7 => ("atomic_write_file", C::Program),
        8 => ("add_list_element", C::Write),
        9 => ("remove_list_element", C::Write),
        10 => ("create_object", C::Write),
        11 => ("delete_object", C::Write),
        12 => ("read_property", C::Read),
        14 => ("read_property_multiple", C::Read),
        15 => ("write_property", C::Write),
        16 => ("write_property_multiple", C::Write),
        17 => ("device_communication_control", C::Control),
        18 => ("confirmed_private_transfer", C::Other),
        19 => ("confirmed_text_message", C::Other),
        20 => ("reinitialize_device", C::Control),
        21 => ("vt_open", C::Other),
        22 => ("vt_close", C::Other),
        23 => ("vt_data", C::Other),
        26 => ("read_range", C::Read),
        27 => ("life_safety_operation", C::Control),
        28 => ("subscribe_cov_property", C::Read),
        29 => ("get_event_information", C::Read),
        30 => ("subscribe_cov_property_multiple", C::Read),
        31 => ("confirmed_cov_notification_multiple", C::Read),
        32 => ("confirmed_audit_notification", C::Other),
        33 => ("audit_log_query", C::Read),
        _ => ("unknown_confirmed_service", C::Other),
    }
}

fn unconfirmed(s: u8) -> (&'static str, C) {
    match s {
        0 => ("i_am", C::Other),
        1 => ("i_have", C::Other),
        2 => ("unconfirmed_cov_notification", C::Read),
        3 => ("unconfirmed_event_notification", C::Read),
        4 => ("unconfirmed_private_transfer", C::Other),
        5 => ("unconfirmed_text_message", C::Other),
        6 => ("time_synchronization", C::Control),
        7 => ("who_has", C::Other),
        8 => ("who_is", C::Other),
        9 => ("utc_time_synchronization", C::Control),
        10 => ("write_group", C::Write),
        11 => ("unconfirmed_cov_notification_multiple", C::Read),
        12 => ("unconfirmed_audit_notification", C::Other),
        13 => ("who_am_i", C::Other),
        14 => ("you_are", C::Write),
        _ => ("unknown_unconfirmed_service", C::Other),
    }
}

pub fn observe(p: &[u8], ops: &mut Ops) {
    let Some(Some(n)) = npdu(p) else { return };
    let Some(a) = apdu(n) else {
        if n.len() >= 2 && n[1] & 0x80 != 0 {
            ops.add(0x300, "network_message", C::Other);
        }
        return;
    };
    let segmented = a[0] & 0x08 != 0;
    match a[0] >> 4 {
        0 => {
            let at = if segmented { 5 } else { 3 };
            if let Some(&s) = a.get(at) {
                let (name, class) = confirmed(s);
                ops.add(s as u32, name, class);
            }
        }
        1 => {
            if let Some(&s) = a.get(1) {
                let (name, class) = unconfirmed(s);
                ops.add(0x100 | s as u32, name, class);
            }
        }
        5 => {
            if let Some(&s) = a.get(2) {
                let (name, class) = confirmed(s);
                ops.error(s as u32, name, class);
            }
        }
        6 => ops.error(0x206, "reject", C::Other),
        7 => ops.error(0x207, "abort", C::Other),
        _ => {}
    }
}

/// A tagged value at `at`: (tag number, context-specific, value bytes,
/// where the next begins). Opening and closing tags have no value.
fn tagged(a: &[u8], at: usize) -> Option<(u8, bool, &[u8], usize)> {
    let b = *a.get(at)?;
    let (tag, context, lvt) = (b >> 4, b & 0x08 != 0, b & 0x07);
    if tag == 0x0F {
        return None; // extended tag numbers: not in the messages read here
    }
    let (len, start) = match lvt {
        5 => match *a.get(at + 1)? {
            254 => (be16(a, at + 2)? as usize, at + 4),
            255 => return None,
            n => (n as usize, at + 2),
        },
        6 | 7 if context => (0, at + 1), // opening / closing tag
        n => (n as usize, at + 1),
    };
    Some((tag, context, a.get(start..start + len)?, start + len))
}

/// An unsigned integer's value (1 to 4 bytes).
fn unsigned(v: &[u8]) -> Option<u32> {
    (1..=4)
        .contains(&v.len())
        .then(|| v.iter().fold(0u32, |n, b| n << 8 | *b as u32))
}

/// A character string's text (after its character-set byte).
fn text(v: &[u8]) -> String {
    identity_text(v.get(1..).unwrap_or_default())
}

/// What a device says of itself: its vendor id in an I-Am, and the
/// vendor-name (121), vendor-identifier (120), model-name (70),
/// firmware-revision (44), application-software-version (12, kept as
/// software) and serial-number (372) properties in a ReadProperty
/// acknowledgement it sends. A vendor name wins over a vendor id.
pub fn identify(p: Payload<'_>) -> Option<DeviceIdentity> {
    let a = apdu(npdu(p.data)??)?;
    let mut id = DeviceIdentity::default();
    match (a[0], a.get(1), a.get(2)) {
        // Unconfirmed I-Am: object id, max APDU, segmentation, vendor id.
        (0x10, Some(0), _) => {
            let (_, _, _, at) = tagged(a, 2)?;
            let (_, _, _, at) = tagged(a, at)?;
            let (_, _, _, at) = tagged(a, at)?;
            let (tag, false, v, _) = tagged(a, at)? else {
                return None;
            };
            id.vendor_id = format!("BACnet vendor {}", unsigned(v).filter(|_| tag == 2)?);
        }
        // Complex ACK (not segmented) of ReadProperty: object id [0],
        // property [1], optional array index [2], value in [3].
        (0x30, Some(_), Some(12)) => {
            let (0, true, _, at) = tagged(a, 3)? else {
                return None;
            };
            let (1, true, prop, mut at) = tagged(a, at)? else {
                return None;
            };
            let prop = unsigned(prop)?;
            if let Some((2, true, _, next)) = tagged(a, at) {
                at = next;
            }
            if a.get(at) != Some(&0x3E) {
                return None;
            }
            let (tag, false, v, _) = tagged(a, at + 1)? else {
                return None;
            };
            match (prop, tag) {
                (121, 7) => id.vendor = text(v),
                (120, 2) => id.vendor_id = format!("BACnet vendor {}", unsigned(v)?),
                (70, 7) => id.product = text(v),
                (44, 7) => id.firmware = text(v),
                (372, 7) => id.serial = text(v),
                (12, 7) => {
                    id.software = identity_text(
                        &[
                            b"application-software-version ",
                            v.get(1..).unwrap_or_default(),
                        ]
                        .concat(),
                    )
                }
                _ => return None,
            }
        }
        _ => return None,
    }
    id.some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_property_and_error() {
        // BVLC unicast, NPDU v1 expecting reply, confirmed request writeProperty.
        let p = [
            0x81, 0x0A, 0x00, 0x0D, 0x01, 0x04, 0x00, 0x05, 0x01, 0x0F, 0x0C, 0x00, 0x00,
        ];
        assert!(detect(&p));
        let mut ops = Ops::default();
        observe(&p, &mut ops);
        let e = [0x81, 0x0A, 0x00, 0x0A, 0x01, 0x00, 0x50, 0x01, 0x0F, 0x91];
        observe(&e, &mut ops);
        let v = ops.to_proto();
        assert_eq!(
            (v[0].name.as_str(), v[0].count, v[0].errors),
            ("write_property", 1, 1)
        );
        assert!(!detect(&[0x81, 0x0A, 0x00, 0x06, 0x02, 0x00])); // NPDU version 2
        assert!(!detect(&[0x81, 0x00, 0x00, 0x09, 0x00, 0x00])); // BVLC result, wrong length
        assert!(detect(&[0x81, 0x00, 0x00, 0x06, 0x00, 0x00])); // BVLC result
    }
}
