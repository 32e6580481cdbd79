//! RDP: identified from the X.224 connection request or confirm that opens
//! every connection ([MS-RDPBCGR] 2.2.1.1 and 2.2.1.2): TPKT, an X.224
//! CR carrying the client's `Cookie: mstshash=` line or routing token
//! and/or an RDP negotiation request, or a CC carrying the negotiation
//! response or failure. ISO-on-TCP's own connection requests (S7comm)
//! carry TSAP parameters instead and are not taken for RDP.

use tidewatch_proto::v1::OperationClass as C;

use super::{be16, Observer, Ops, Protocol, Roles};

/// RDP (TCP 3389 by default; any port).
pub const PROTOCOL: Protocol = Protocol {
    name: "rdp",
    tcp: Some(detect),
    udp: None,
    server_ports: &[3389],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Fixed {
        client: None,
        server: Some("remote_access_server"),
    },
    identify: None,
};

/// X.224 TPDU codes.
const CR: u8 = 0xe0;
const CC: u8 = 0xd0;

/// The TPDU code of a connection request or confirm that is RDP's.
fn connection(p: &[u8]) -> Option<u8> {
    // TPKT: version 3, reserved, length (the whole payload).
    if p.len() < 11 || p[0] != 3 || p[1] != 0 || be16(p, 2)? as usize != p.len() {
        return None;
    }
    // X.224: length indicator (the rest of the TPKT), code, refs, class 0.
    if p[4] as usize != p.len() - 5 || p[10] != 0 {
        return None;
    }
    let rest = &p[11..];
    // RDP_NEG_REQ / RSP / FAILURE: type, flags, length 8 (LE), 4 bytes.
    let neg = |b: &[u8], types: &[u8]| b.len() == 8 && types.contains(&b[0]) && b[2..4] == [8, 0];
    match p[5] {
        CR => {
            let cookie = [b"Cookie: mstshash=".as_slice(), b"Cookie: msts="]
                .iter()
                .any(|c| rest.starts_with(c));
            let ok = if cookie {
                // The cookie line, then optionally the negotiation request.
                let end = rest.windows(2).position(|w| w == b"\r\n");
                end.is_some_and(|e| {
                    let after = &rest[e + 2..];
                    after.is_empty() || neg(after, &[1])
                })
            } else {
                neg(rest, &[1])
            };
            ok.then_some(CR)
        }
        CC if neg(rest, &[2, 3]) => Some(CC),
        _ => None,
    }
}

pub fn detect(p: &[u8]) -> bool {
    connection(p).is_some()
}

/// Counts the connection request and confirm; what follows is TLS or
/// RDP's own encryption.
pub fn observe(p: &[u8], ops: &mut Ops) {
    match connection(p) {
        Some(CR) => ops.add(CR.into(), "connection_request", C::Other),
        Some(CC) => ops.add(CC.into(), "connection_confirm", C::Other),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TPKT + X.224 (code) + body.
    fn tpdu(code: u8, body: &[u8]) -> Vec<u8> {
        let len = 11 + body.len();
        let mut p = vec![
            3,
            0,
            (len >> 8) as u8,
            len as u8,
            (len - 5) as u8,
            code,
            0,
            0,
            0,
            0,
            0,
        ];
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn connection_requests_and_confirms_of_rdp_and_not_of_s7() {
        let neg_req = [1, 0, 8, 0, 3, 0, 0, 0];
        let cookie = b"Cookie: mstshash=engineer\r\n";
        assert!(detect(&tpdu(CR, &[cookie.as_slice(), &neg_req].concat())));
        assert!(detect(&tpdu(CR, cookie)));
        assert!(detect(&tpdu(CR, &neg_req)));
        assert!(detect(&tpdu(CC, &[2, 0, 8, 0, 1, 0, 0, 0])));
        assert!(
            detect(&tpdu(CC, &[3, 0, 8, 0, 5, 0, 0, 0])),
            "negotiation failure"
        );
        // S7comm's ISO-on-TCP connection request: TSAP parameters.
        let s7 = [0xc1, 2, 1, 0, 0xc2, 2, 1, 2, 0xc0, 1, 0x0a];
        assert!(!detect(&tpdu(CR, &s7)));
        assert!(!detect(&tpdu(CC, &s7)));
        assert!(!detect(&tpdu(CR, b"Cookie: mstshash=x")), "no line end");
        let mut short = tpdu(CR, &neg_req);
        short.pop();
        assert!(!detect(&short), "TPKT length differs");
        let mut ops = Ops::default();
        observe(&tpdu(CR, cookie), &mut ops);
        observe(&tpdu(CC, &[2, 0, 8, 0, 1, 0, 0, 0]), &mut ops);
        observe(&tpdu(CR, &s7), &mut ops);
        let names: Vec<String> = ops.to_proto().into_iter().map(|o| o.name).collect();
        assert_eq!(names, ["connection_confirm", "connection_request"]);
    }
}
