//! Small conversions shared by the sensor and the collector, so both name
//! things the same way (`read` output, ClickHouse rows).

use std::net::IpAddr;

use crate::v1::FlowEnd;

/// Text form of a 4-byte (IPv4) or 16-byte (IPv6) address; `None` otherwise.
pub fn ip_text(b: &[u8]) -> Option<String> {
    match b.len() {
        // Dotted quad by hand: the sink writes two per flow, and the
        // formatting machinery was a tenth of its time.
        4 => {
            let mut s = String::with_capacity(15);
            for (i, &octet) in b.iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push((b'0' + octet / 100) as char);
                }
                if octet >= 10 {
                    s.push((b'0' + octet / 10 % 10) as char);
                }
                s.push((b'0' + octet % 10) as char);
            }
            Some(s)
        }
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?).to_string()),
        _ => None,
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
