//! Small conversions shared by the sensor and the collector, so both name
//! things the same way (`read` output, ClickHouse rows).

use std::net::IpAddr;

use crate::v1::FlowEnd;

/// Text form of a 4-byte (IPv4) or 16-byte (IPv6) address; `None` otherwise.
pub fn ip_text(b: &[u8]) -> Option<String> {
    IpText::of(b).map(|t| t.as_str().to_owned())
}

/// The text form of an address (as [`ip_text`]) held inline, without an
/// allocation: the sink writes two per flow and groups its rollups by one.
/// Ordered and compared as its text.
#[derive(Clone, Copy)]
pub struct IpText {
    len: u8,
    /// The longest text of an IPv6 address is 39 bytes
    /// (`ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff`); 45 with an IPv4 tail.
    buf: [u8; 45],
}

impl IpText {
    /// The text of a 4-byte (IPv4) or 16-byte (IPv6) address; `None` otherwise.
    pub fn of(b: &[u8]) -> Option<IpText> {
        let mut t = IpText {
            len: 0,
            buf: [0; 45],
        };
        match b.len() {
            // Dotted quad by hand: the formatting machinery was a tenth of
            // the sink's time.
            4 => {
                let mut push = |c: u8| {
                    t.buf[t.len as usize] = c;
                    t.len += 1;
                };
                for (i, &octet) in b.iter().enumerate() {
                    if i > 0 {
                        push(b'.');
                    }
                    if octet >= 100 {
                        push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        push(b'0' + octet / 10 % 10);
                    }
                    push(b'0' + octet % 10);
                }
            }
            16 => {
                use std::io::Write;
                let a = IpAddr::from(<[u8; 16]>::try_from(b).ok()?);
                let mut w = &mut t.buf[..];
                write!(w, "{a}").ok()?;
                let left = w.len();
                t.len = (t.buf.len() - left) as u8;
            }
            _ => return None,
        }
        Some(t)
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, hex letters, '.' and ':' are ever written.
        std::str::from_utf8(self.bytes()).expect("ASCII")
    }
}

impl PartialEq for IpText {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}
impl Eq for IpText {}
impl std::hash::Hash for IpText {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.bytes().hash(h)
    }
}
impl PartialOrd for IpText {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for IpText {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Bytes order is the text's order (ASCII).
        self.bytes().cmp(other.bytes())
    }
}
impl std::fmt::Display for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Network-order bytes of an address (4 for IPv4, 16 for IPv6), as records
/// carry them; the inverse of [`ip_text`].
pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// Text form of a MAC address (`aa:bb:cc:dd:ee:ff`), as ClickHouse keeps it.
pub fn mac_text(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Lowercase transport name of an IP protocol number ("tcp", "udp", ... or "ip-N").
pub fn transport_name(proto: u32) -> std::borrow::Cow<'static, str> {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => format!("ip-{other}").into(),
    }
}

/// Stable name of a flow end reason ("" when unspecified).
pub fn flow_end_name(end: i32) -> &'static str {
    match FlowEnd::try_from(end).unwrap_or(FlowEnd::Unspecified) {
        FlowEnd::IdleTimeout => "idle_timeout",
        FlowEnd::ActiveTimeout => "active_timeout",
        FlowEnd::TcpClose => "tcp_close",
        FlowEnd::Evicted => "evicted",
        FlowEnd::EndOfInput => "end_of_input",
        FlowEnd::Unspecified => "",
    }
}

/// Wall-clock time in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        assert_eq!(ip_text(&[10, 0, 0, 1]).as_deref(), Some("10.0.0.1"));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(ip_text(&v6).as_deref(), Some("::1"));
        assert_eq!(ip_text(&[1, 2, 3]), None);
        let longest = [0xffu8; 16];
        assert_eq!(
            IpText::of(&longest).unwrap().as_str(),
            std::net::Ipv6Addr::from(longest).to_string()
        );
        let mapped = std::net::Ipv4Addr::new(255, 255, 255, 255).to_ipv6_mapped();
        assert_eq!(
            IpText::of(&mapped.octets()).unwrap().as_str(),
            "::ffff:255.255.255.255"
        );
        // Every octet value in every position, as the standard library
        // writes it.
        for o in 0..=255u8 {
            for b in [
                [o, 0, 9, 255],
                [1, o, 10, 99],
                [100, 255, o, 0],
                [7, 7, 7, o],
            ] {
                assert_eq!(ip_text(&b), Some(std::net::Ipv4Addr::from(b).to_string()));
            }
        }
        assert_eq!(transport_name(17), "udp");
        assert_eq!(transport_name(47), "ip-47");
        assert_eq!(flow_end_name(FlowEnd::TcpClose as i32), "tcp_close");
        assert_eq!(flow_end_name(99), "");
    }
}
