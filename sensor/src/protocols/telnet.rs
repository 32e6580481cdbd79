//! Telnet: identified from the option negotiation (RFC 854/855: `IAC` then
//! `WILL`/`WONT`/`DO`/`DONT` and an option, or a subnegotiation `IAC SB
//! ... IAC SE`) that both sides start with. Clear-text remote access to a
//! device's shell, which E26 §4.2.6 asks to be recorded.

use tidewatch_proto::v1::OperationClass as C;

use super::{Observer, Ops, Protocol, Roles};

/// Telnet (TCP 23 by default; any port).
pub const PROTOCOL: Protocol = Protocol {
    name: "telnet",
    tcp: Some(detect),
    udp: None,
    server_ports: &[23],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Fixed {
        client: None,
        server: Some("remote_access_server"),
    },
    identify: None,
};

const IAC: u8 = 0xFF;
const SB: u8 = 0xFA;
const SE: u8 = 0xF0;

/// The negotiation commands a payload starts with (at most 64), or `None`
/// when it does not start with one or one is malformed. Options above 49
/// are unassigned, except 255 (the extended list).
fn negotiations(p: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut n = 0;
    while p.get(at) == Some(&IAC) && n < 64 {
        match *p.get(at + 1)? {
            0xFB..=0xFE => {
                let opt = *p.get(at + 2)?;
                if opt > 49 && opt != 255 {
                    return None;
                }
                at += 3;
            }
            SB => {
                let end = p[at + 2..].windows(2).position(|w| w == [IAC, SE])?;
                at += 2 + end + 2;
            }
            _ => return None,
        }
        n += 1;
    }
    (n > 0).then_some(n)
}

pub fn detect(p: &[u8]) -> bool {
    // The first command is an option request, not a subnegotiation.
    p.len() >= 3 && (0xFB..=0xFE).contains(&p[1]) && negotiations(p).is_some()
}

/// Counts the payloads that negotiate options.
pub fn observe(p: &[u8], ops: &mut Ops) {
    if negotiations(p).is_some() {
        ops.add(0, "option_negotiation", C::Other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_negotiation_names_it_and_garbage_does_not() {
        assert!(detect(&[IAC, 0xFD, 24, IAC, 0xFD, 32, IAC, 0xFB, 1]));
        assert!(detect(&[IAC, 0xFB, 3, IAC, SB, 24, 1, IAC, SE]));
        assert!(!detect(&[IAC, SB, 24, 1, IAC, SE]));
        assert!(!detect(&[IAC, 0xFD, 200]));
        assert!(!detect(&[IAC, 0xFD]));
        assert!(!detect(&[IAC, 0xFB, 3, IAC, SB, 24, 1]));
        assert!(!detect(b"login: "));
    }
}
