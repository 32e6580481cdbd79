//! IEC 60870-5-104: APDUs of start byte 0x68, length (4..=253) and a 4-byte
//! control field (I, S or U format); I-format APDUs carry an ASDU whose type
//! identification names the operation (C_* types are commands).

use tidewatch_proto::v1::OperationClass as C;

use super::{Observer, Ops, Protocol, Roles};

/// IEC 60870-5-104 (TCP 2404): a controller protocol.
pub const PROTOCOL: Protocol = Protocol {
    name: "iec104",
    tcp: Some(detect),
    udp: None,
    server_ports: &[2404],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Controller,
    identify: None,
};

fn apdus(p: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        if rest.len() < 6 || rest[0] != 0x68 {
            return None;
        }
        let len = rest[1] as usize;
        if !(4..=253).contains(&len) || rest.len() < 2 + len {
            return None;
        }
        let apdu = &rest[..2 + len];
        // U-format: exactly 4 control bytes with a single function bit.
        if apdu[2] & 0x03 == 0x03
            && (len != 4 || !matches!(apdu[2] & 0xFC, 0x04 | 0x08 | 0x10 | 0x20 | 0x40 | 0x80))
        {
            return None;
        }
        if apdu[2] & 0x03 == 0x01 && len != 4 {
            return None;
        }
        out.push(apdu);
        rest = &rest[2 + len..];
        if out.len() > 64 {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

pub fn detect(p: &[u8]) -> bool {
    apdus(p).is_some()
}

fn type_id(t: u8) -> (&'static str, C) {
    match t {
        1 => ("M_SP_NA_1", C::Read),
        3 => ("M_DP_NA_1", C::Read),
        5 => ("M_ST_NA_1", C::Read),
        7 => ("M_BO_NA_1", C::Read),
        9 => ("M_ME_NA_1", C::Read),
        11 => ("M_ME_NB_1", C::Read),
        13 => ("M_ME_NC_1", C::Read),
        15 => ("M_IT_NA_1", C::Read),
        30 => ("M_SP_TB_1", C::Read),
        31 => ("M_DP_TB_1", C::Read),
        36 => ("M_ME_TF_1", C::Read),
        45 => ("C_SC_NA_1", C::Control),
        46 => ("C_DC_NA_1", C::Control),
        47 => ("C_RC_NA_1", C::Control),
        48 => ("C_SE_NA_1", C::Write),
        49 => ("C_SE_NB_1", C::Write),
        50 => ("C_SE_NC_1", C::Write),
        51 => ("C_BO_NA_1", C::Write),
        58 => ("C_SC_TA_1", C::Control),
        59 => ("C_DC_TA_1", C::Control),
        60 => ("C_RC_TA_1", C::Control),
        61 => ("C_SE_TA_1", C::Write),
        62 => ("C_SE_TB_1", C::Write),
        63 => ("C_SE_TC_1", C::Write),
        64 => ("C_BO_TA_1", C::Write),
        70 => ("M_EI_NA_1", C::Other),
        100 => ("C_IC_NA_1", C::Read),
        101 => ("C_CI_NA_1", C::Read),
        102 => ("C_RD_NA_1", C::Read),
        103 => ("C_CS_NA_1", C::Control),
        104 => ("C_TS_NA_1", C::Diagnostic),
        105 => ("C_RP_NA_1", C::Control),
        107 => ("C_TS_TA_1", C::Diagnostic),
        110..=113 => ("P_parameter", C::Write),
        120..=127 => ("F_file_transfer", C::Program),
        2..=40 => ("M_monitor", C::Read),
        _ => ("unknown_type", C::Other),
    }
}

/// Counts ASDU type ids of I-format APDUs; a negative confirmation (P/N bit
/// in the cause of transmission) counts as an error of that type.
pub fn observe(p: &[u8], ops: &mut Ops) {
    for a in apdus(p).unwrap_or_default() {
        if a[2] & 0x01 == 0 && a.len() >= 9 {
            let t = a[6];
            let (name, class) = type_id(t);
            if a[8] & 0x40 != 0 {
                ops.error(t as u32, name, class);
            } else {
                ops.add(t as u32, name, class);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startdt_and_single_command() {
        let startdt = [0x68, 0x04, 0x07, 0x00, 0x00, 0x00];
        assert!(detect(&startdt));
        let cmd = [
            0x68, 0x0E, 0x00, 0x00, 0x00, 0x00, 45, 0x01, 0x06, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00,
            0x81,
        ];
        let mut both = startdt.to_vec();
        both.extend_from_slice(&cmd);
        assert!(detect(&both));
        let mut ops = Ops::default();
        observe(&both, &mut ops);
        assert_eq!(ops.to_proto()[0].name, "C_SC_NA_1");
        assert!(!detect(&[0x68, 0x04, 0xFF, 0, 0, 0]));
    }
}
