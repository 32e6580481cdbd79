//! VNC: identified from the RFB protocol version message both sides send
//! first (`RFB 003.008\n`, RFC 6143 §7.1.1): exactly twelve bytes.

use tidewatch_proto::v1::OperationClass as C;

use super::{Observer, Ops, Protocol, Roles};

/// VNC / RFB (TCP 5900 by default; any port).
pub const PROTOCOL: Protocol = Protocol {
    name: "vnc",
    tcp: Some(detect),
    udp: None,
    server_ports: &[5900, 5901],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Fixed {
        client: None,
        server: Some("remote_access_server"),
    },
    identify: None,
};

pub fn detect(p: &[u8]) -> bool {
    p.len() == 12
        && p.starts_with(b"RFB ")
        && p[11] == b'\n'
        && p[7] == b'.'
        && p[4..7].iter().chain(&p[8..11]).all(u8::is_ascii_digit)
}

/// Counts the version messages.
pub fn observe(p: &[u8], ops: &mut Ops) {
    if detect(p) {
        ops.add(0, "protocol_version", C::Other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_twelve_byte_version_message_and_nothing_else() {
        assert!(detect(b"RFB 003.008\n"));
        assert!(detect(b"RFB 003.889\n"));
        assert!(!detect(b"RFB 003.008"));
        assert!(!detect(b"RFB 003.008\n\0"));
        assert!(!detect(b"RFB 0x3.008\n"));
        assert!(!detect(b"SSH-2.0-x\r\n\0"));
    }
}
