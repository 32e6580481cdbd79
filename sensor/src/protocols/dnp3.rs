//! DNP3 (IEEE 1815) over TCP or UDP: link-layer frames starting 0x05 0x64
//! with a CRC-protected 10-byte header, then 16-byte data blocks each
//! followed by a CRC. The application function code is the third byte of the
//! first block (after the transport and application control bytes).

use tidewatch_proto::v1::OperationClass as C;

use super::{Observer, Ops, Protocol, Roles};

/// DNP3 over TCP or UDP: a controller protocol on 20000.
pub const PROTOCOL: Protocol = Protocol {
    name: "dnp3",
    tcp: Some(detect),
    udp: Some(detect),
    server_ports: &[20000],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Controller,
    identify: None,
};

/// CRC-16/DNP (polynomial 0x3D65, reflected, final complement).
fn crc(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= b as u16;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA6BC
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn header_ok(f: &[u8]) -> bool {
    f.len() >= 10
        && f[0] == 0x05
        && f[1] == 0x64
        && f[2] >= 5
        && crc(&f[..8]) == u16::from_le_bytes([f[8], f[9]])
}

/// Length on the wire of a frame whose header says `len` (user data + 5).
fn frame_len(len: u8) -> usize {
    let user = len as usize - 5;
    10 + user + user.div_ceil(16) * 2
}

/// A payload starting with a DNP3 link header whose CRC checks.
pub fn detect(p: &[u8]) -> bool {
    header_ok(p)
}

fn function(fc: u8) -> (&'static str, C) {
    match fc {
        0 => ("confirm", C::Other),
        1 => ("read", C::Read),
        2 => ("write", C::Write),
        3 => ("select", C::Control),
        4 => ("operate", C::Control),
        5 => ("direct_operate", C::Control),
        6 => ("direct_operate_nr", C::Control),
        7 => ("immediate_freeze", C::Control),
        8 => ("immediate_freeze_nr", C::Control),
        9 => ("freeze_clear", C::Control),
        10 => ("freeze_clear_nr", C::Control),
        11 => ("freeze_at_time", C::Control),
        12 => ("freeze_at_time_nr", C::Control),
        13 => ("cold_restart", C::Control),
        14 => ("warm_restart", C::Control),
        15 => ("initialize_data", C::Control),
        16 => ("initialize_application", C::Control),
        17 => ("start_application", C::Control),
        18 => ("stop_application", C::Control),
        19 => ("save_configuration", C::Program),
        20 => ("enable_unsolicited", C::Control),
        21 => ("disable_unsolicited", C::Control),
        22 => ("assign_class", C::Write),
        23 => ("delay_measure", C::Diagnostic),
        24 => ("record_current_time", C::Write),
        25 => ("open_file", C::Program),
        26 => ("close_file", C::Program),
        27 => ("delete_file", C::Program),
        28 => ("get_file_info", C::Read),
        29 => ("authenticate_file", C::Program),
        30 => ("abort_file", C::Program),
        31 => ("activate_config", C::Program),
        32 => ("authenticate_req", C::Other),
        33 => ("authenticate_err", C::Other),
        129 => ("response", C::Read),
        130 => ("unsolicited_response", C::Read),
        131 => ("authenticate_resp", C::Other),
        _ => ("unknown_function", C::Other),
    }
}

/// Counts application function codes of every frame in the payload that
/// begins a fragment (transport FIR bit set). Responses whose internal
/// indications report a failure (IIN2 bits 0-2: function unsupported, object
/// unknown, parameter error) count as errors.
pub fn observe(p: &[u8], ops: &mut Ops) {
    let mut rest = p;
    for _ in 0..64 {
        if !header_ok(rest) {
            return;
        }
        let total = frame_len(rest[2]);
        let frame = &rest[..total.min(rest.len())];
        // First data block starts after the header; its bytes: transport,
        // application control, function code, [IIN1, IIN2 in responses].
        if frame.len() >= 13 && frame[10] & 0x40 != 0 {
            let fc = frame[12];
            let (name, class) = function(fc);
            let failed = matches!(fc, 129 | 130) && frame.len() >= 15 && frame[14] & 0x07 != 0;
            // A response is counted as a message; one whose internal
            // indications report a bad function, an unknown object or a
            // parameter error is counted as an error too.
            ops.add(fc as u32, name, class);
            if failed {
                ops.error(fc as u32, name, class);
            }
        }
        if total >= rest.len() {
            return;
        }
        rest = &rest[total..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fc: u8) -> Vec<u8> {
        // Header: len 5+5 user bytes (transport, app ctl, fc, 2 bytes).
        let mut h = vec![0x05, 0x64, 10, 0xC4, 1, 0, 2, 0];
        let c = crc(&h);
        h.extend_from_slice(&c.to_le_bytes());
        let data = [0xC0, 0xC1, fc, 0, 0];
        h.extend_from_slice(&data);
        h.extend_from_slice(&crc(&data).to_le_bytes());
        h
    }

    #[test]
    fn crc_and_functions() {
        let f = frame(5);
        assert!(detect(&f));
        let mut bad = f.clone();
        bad[3] ^= 1;
        assert!(!detect(&bad));
        let mut ops = Ops::default();
        let mut two = f.clone();
        two.extend(frame(13));
        observe(&two, &mut ops);
        let names: Vec<String> = ops.to_proto().into_iter().map(|o| o.name).collect();
        assert_eq!(names, vec!["direct_operate", "cold_restart"]);
    }
}
