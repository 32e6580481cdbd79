//! FTP: identified from the server's greeting (a `220` reply, RFC 959
//! §4.2, that names FTP: `220 ProFTPD Server`, `220 (vsFTPd 3.0.5)`,
//! `220 Microsoft FTP Service`), which is also the server's software
//! banner. Controllers and HMIs often serve their files and firmware over
//! FTP; the client's commands are counted (never their arguments: `PASS`
//! carries a password).

use tidewatch_proto::v1::OperationClass as C;

use super::{identity_text, DeviceIdentity, Observer, Ops, Payload, Protocol, Roles};

/// FTP control connections (TCP 21 by default; any port).
pub const PROTOCOL: Protocol = Protocol {
    name: "ftp",
    tcp: Some(detect),
    udp: None,
    server_ports: &[21],
    observe: Observer::Operations(|p, ops| {
        if p.from_client {
            observe(p.data, ops)
        }
    }),
    roles: Roles::None,
    identify: Some(identify),
};

/// The greeting line, without its line end: `220`, a space or a hyphen,
/// printable text naming FTP, at most 512 bytes.
fn greeting(p: &[u8]) -> Option<&[u8]> {
    if !(p.starts_with(b"220 ") || p.starts_with(b"220-")) {
        return None;
    }
    let end = p.iter().take(512).position(|b| *b == b'\n')?;
    let line = p[..end].strip_suffix(b"\r").unwrap_or(&p[..end]);
    let printable = line.iter().all(|b| (0x20..0x7f).contains(b));
    let names_ftp = line.windows(3).any(|w| w.eq_ignore_ascii_case(b"ftp"));
    (printable && names_ftp).then_some(line)
}

pub fn detect(p: &[u8]) -> bool {
    greeting(p).is_some()
}

/// Client commands (RFC 959 §4.1, RFC 2228, RFC 3659) and their classes.
const COMMANDS: &[(&[u8], &str, C)] = &[
    (b"USER", "user", C::Other),
    (b"PASS", "pass", C::Other),
    (b"AUTH", "auth", C::Other),
    (b"RETR", "retr", C::Read),
    (b"LIST", "list", C::Read),
    (b"NLST", "nlst", C::Read),
    (b"MLSD", "mlsd", C::Read),
    (b"SIZE", "size", C::Read),
    (b"STOR", "stor", C::Write),
    (b"APPE", "appe", C::Write),
    (b"STOU", "stou", C::Write),
    (b"DELE", "dele", C::Write),
    (b"RNFR", "rnfr", C::Write),
    (b"RNTO", "rnto", C::Write),
    (b"MKD", "mkd", C::Write),
    (b"RMD", "rmd", C::Write),
    (b"SITE", "site", C::Control),
    (b"QUIT", "quit", C::Other),
];

/// Counts the client's commands, by name.
pub fn observe(p: &[u8], ops: &mut Ops) {
    for line in p.split(|b| *b == b'\n').take(64) {
        let word = line
            .split(|b| *b == b' ' || *b == b'\r')
            .next()
            .unwrap_or_default();
        if let Some((i, (_, name, class))) = COMMANDS
            .iter()
            .enumerate()
            .find(|(_, (c, _, _))| word.eq_ignore_ascii_case(c))
        {
            ops.add(i as u32, *name, *class);
        }
    }
}

/// The server's greeting, as its software banner.
pub fn identify(p: Payload<'_>) -> Option<DeviceIdentity> {
    if p.from_client {
        return None;
    }
    DeviceIdentity {
        software: identity_text(greeting(p.data)?),
        ..DeviceIdentity::default()
    }
    .some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_greeting_that_names_ftp_and_the_commands_that_follow() {
        assert!(detect(b"220 ProFTPD 1.3.8 Server (Debian) [10.0.0.5]\r\n"));
        assert!(detect(b"220-Microsoft FTP Service\r\n220 ready\r\n"));
        assert!(!detect(b"220 mail.example.com ESMTP Postfix\r\n"));
        assert!(!detect(b"220 ftp without a line end"));
        assert!(!detect(b"230 FTP login ok\r\n"));
        let mut ops = Ops::default();
        observe(
            b"USER anonymous\r\nPASS secret\r\nSTOR plc.bin\r\nretr x\r\nXYZ\r\n",
            &mut ops,
        );
        let got: Vec<(String, u64)> = ops
            .to_proto()
            .into_iter()
            .map(|o| (o.name, o.count))
            .collect();
        assert_eq!(
            got,
            [
                ("user".into(), 1),
                ("pass".into(), 1),
                ("retr".into(), 1),
                ("stor".into(), 1)
            ]
        );
        assert!(!format!("{:?}", ops.to_proto()).contains("secret"));
    }
}
