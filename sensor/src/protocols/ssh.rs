//! SSH: identified from the version exchange every connection starts with
//! (`SSH-2.0-software comments\r\n`, RFC 4253 §4.2), sent by both sides.
//! Remote access into a vessel's networks is evidence a surveyor asks for
//! (IACS UR E26 §4.2.6), and it is recognised by payload on any port.

use tidewatch_proto::v1::OperationClass as C;

use super::{be32, identity_text, DeviceIdentity, Observer, Ops, Payload, Protocol, Roles};

/// SSH (TCP 22 by default; any port).
pub const PROTOCOL: Protocol = Protocol {
    name: "ssh",
    tcp: Some(detect),
    udp: None,
    server_ports: &[22],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Fixed {
        client: None,
        server: Some("remote_access_server"),
    },
    identify: Some(identify),
};

/// The version line without its line end: `SSH-` protocol version `-`
/// software, printable ASCII, at most 255 bytes with its line end (RFC 4253
/// §4.2).
fn version_line(p: &[u8]) -> Option<&[u8]> {
    let rest = p
        .strip_prefix(b"SSH-2.0-")
        .or_else(|| p.strip_prefix(b"SSH-1.99-"))?;
    let end = rest.iter().take(255).position(|b| *b == b'\n')?;
    let software = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    let printable = software.iter().all(|b| (0x20..0x7f).contains(b));
    (!software.is_empty() && printable).then(|| &p[..p.len() - rest.len() + software.len()])
}

pub fn detect(p: &[u8]) -> bool {
    version_line(p).is_some()
}

/// Counts the version exchange and the clear-text key exchange messages
/// (KEXINIT, NEWKEYS) that follow it; after NEWKEYS everything is
/// encrypted and nothing more is read.
pub fn observe(p: &[u8], ops: &mut Ops) {
    if version_line(p).is_some() {
        ops.add(0, "version_exchange", C::Other);
        return;
    }
    // Binary packet: length (4), padding length (1), message code.
    let (Some(len), Some(&code)) = (be32(p, 0), p.get(5)) else {
        return;
    };
    if !(len as usize >= 12 && len as usize + 4 >= p.len().min(35_000)) {
        return;
    }
    match code {
        20 => ops.add(20, "kexinit", C::Other),
        21 => ops.add(21, "newkeys", C::Other),
        _ => {}
    }
}

/// The software a side announces in its version line
/// (`SSH-2.0-OpenSSH_9.2p1 Debian-2`), kept whole.
pub fn identify(p: Payload<'_>) -> Option<DeviceIdentity> {
    DeviceIdentity {
        software: identity_text(version_line(p.data)?),
        ..DeviceIdentity::default()
    }
    .some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_line_names_it_and_nothing_else_does() {
        assert!(detect(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"));
        assert!(detect(b"SSH-1.99-Cisco-1.25\n"));
        assert!(!detect(b"SSH-2.0-\r\n"), "no software");
        assert!(!detect(b"SSH-2.0-OpenSSH"), "no line end");
        assert!(!detect(b"SSH-3.0-x\r\n"));
        assert!(!detect(b"SSH-2.0-bad\x01byte\r\n"));
        assert!(!detect(
            &[b"SSH-2.0-".as_slice(), &[b'a'; 300], b"\r\n"].concat()
        ));
        assert!(!detect(b"GET / HTTP/1.1\r\n"));
        let mut ops = Ops::default();
        observe(b"SSH-2.0-OpenSSH_9.2p1\r\n", &mut ops);
        let mut kex = vec![0, 0, 0x01, 0x2c, 0x0a, 20];
        kex.resize(300, 0);
        observe(&kex, &mut ops);
        observe(
            &[0, 0, 0, 12, 10, 21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &mut ops,
        );
        observe(&[0xde, 0xad, 0xbe, 0xef, 1, 20], &mut ops);
        let names: Vec<String> = ops.to_proto().into_iter().map(|o| o.name).collect();
        assert_eq!(names, ["version_exchange", "kexinit", "newkeys"]);
    }
}
