//! Local inspection output (`tidewatch-sensor read`): one JSON object per flow.
//! The keys are a stable interface used by tests and analysts.

use serde_json::{json, Value};
use tidewatch_proto::util::{flow_end_name, ip_text, transport_name};
use tidewatch_proto::v1::{AssetObservation, FlowRecord};

/// Text form of a 4- or 16-byte address; anything else is shown as hex.
pub fn ip_string(b: &[u8]) -> String {
    ip_text(b).unwrap_or_else(|| b.iter().map(|x| format!("{x:02x}")).collect())
}

fn secs(us: i64) -> f64 {
    us as f64 / 1e6
}

/// The counter keys of one direction, in output order.
const C2S_KEYS: [&[u8]; 4] = [
    b",\"c2s_packets\":",
    b",\"c2s_bytes\":",
    b",\"c2s_payload_bytes\":",
    b",\"c2s_tcp_flags\":",
];
const S2C_KEYS: [&[u8]; 4] = [
    b",\"s2c_packets\":",
    b",\"s2c_bytes\":",
    b",\"s2c_payload_bytes\":",
    b",\"s2c_tcp_flags\":",
];

/// Appends one flow as a JSON object and a newline to `out`.
///
/// Keys, in this order (the documented interface): `client_ip`,
/// `client_port`, `server_ip`, `server_port`, `transport`, `ip_protocol`,
/// `c2s_packets`, `c2s_bytes`, `c2s_payload_bytes`, `c2s_tcp_flags`, the same
/// four for `s2c`, `first_seen`, `last_seen` (epoch seconds, fractional),
/// `app_protocol` (or null), `vlan`, `end`, `operations` (objects with
/// `code`, `name`, `class`, `count`, `errors`) and `indicators`.
///
/// Written by hand rather than through serde: `read` prints a record per
/// flow, and building a tree of strings for each was a tenth of its time.
pub fn write_flow_json(out: &mut Vec<u8>, r: &FlowRecord) {
    // One record without operations is about 400 bytes.
    out.reserve(512);
    out.extend_from_slice(b"{\"client_ip\":\"");
    write_ip(out, &r.client_ip);
    out.extend_from_slice(b"\",\"client_port\":");
    write_int(out, r.client_port);
    out.extend_from_slice(b",\"server_ip\":\"");
    write_ip(out, &r.server_ip);
    out.extend_from_slice(b"\",\"server_port\":");
    write_int(out, r.server_port);
    out.extend_from_slice(b",\"transport\":");
    write_str(out, &transport_name(r.ip_protocol));
    out.extend_from_slice(b",\"ip_protocol\":");
    write_int(out, r.ip_protocol);
    for (keys, d) in [(&C2S_KEYS, r.c2s), (&S2C_KEYS, r.s2c)] {
        let d = d.unwrap_or_default();
        let values = [d.packets, d.ip_bytes, d.payload_bytes, d.tcp_flags as u64];
        for (key, v) in keys.iter().zip(values) {
            out.extend_from_slice(key);
            write_int(out, v);
        }
    }
    out.extend_from_slice(b",\"first_seen\":");
    write_secs(out, r.first_seen_us);
    out.extend_from_slice(b",\"last_seen\":");
    write_secs(out, r.last_seen_us);
    out.extend_from_slice(b",\"app_protocol\":");
    if r.app_protocol.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        write_str(out, &r.app_protocol);
    }
    out.extend_from_slice(b",\"vlan\":");
    write_int(out, r.vlan);
    out.extend_from_slice(b",\"end\":");
    write_str(
        out,
        match flow_end_name(r.end) {
            "" => "unspecified",
            name => name,
        },
    );
    out.extend_from_slice(b",\"operations\":[");
    for (i, o) in r.operations.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"code\":");
        write_int(out, o.code);
        out.extend_from_slice(b",\"name\":");
        write_str(out, &o.name);
        out.extend_from_slice(b",\"class\":");
        write_int(out, o.class);
        out.extend_from_slice(b",\"count\":");
        write_int(out, o.count);
        out.extend_from_slice(b",\"errors\":");
        write_int(out, o.errors);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"indicators\":[");
    for (i, s) in r.indicators.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, s);
    }
    out.extend_from_slice(b"]}\n");
}

fn write_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Microseconds as decimal seconds: the exact decimal of `us / 1e6`, which
/// parses to the same f64 as that division.
fn write_secs(out: &mut Vec<u8>, us: i64) {
    if us < 0 {
        out.push(b'-');
    }
    let u = us.unsigned_abs();
    write_int(out, u / 1_000_000);
    out.push(b'.');
    let mut frac = u % 1_000_000;
    if frac == 0 {
        out.push(b'0');
        return;
    }
    // Six digits, without the trailing zeros.
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    let len = 6 - digits.iter().rev().take_while(|d| **d == b'0').count();
    out.extend_from_slice(&digits[..len]);
}

fn write_ip(out: &mut Vec<u8>, b: &[u8]) {
    use std::io::Write;
    match b.len() {
        4 => {
            for (i, &o) in b.iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_int(out, o);
            }
        }
        16 => {
            let a: [u8; 16] = b.try_into().expect("16 bytes");
            let _ = write!(out, "{}", std::net::Ipv6Addr::from(a));
        }
        _ => {
            for x in b {
                let _ = write!(out, "{x:02x}");
            }
        }
    }
}

/// A JSON string: quotes, backslashes and control characters escaped.
fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// The JSON object for one asset of the inventory.
pub fn asset_json(a: &AssetObservation) -> Value {
    json!({
        "mac": a.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
        "ips": a.ips.iter().map(|b| ip_string(b)).collect::<Vec<_>>(),
        "vendor": if a.vendor.is_empty() { Value::Null } else { Value::from(a.vendor.clone()) },
        "first_seen": secs(a.first_seen_us),
        "last_seen": secs(a.last_seen_us),
        "protocols": a.protocols,
        "roles": a.roles,
        "identity": if a.identity_protocol.is_empty() {
            Value::Null
        } else {
            json!({
                "vendor": a.device_vendor,
                "product": a.product,
                "firmware": a.firmware,
                "serial": a.serial,
                "protocol": a.identity_protocol,
            })
        },
        "software": a.software,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewatch_proto::v1::{DirectionCounters, FlowEnd, Operation};

    fn parse(r: &FlowRecord) -> serde_json::Map<String, Value> {
        let mut out = Vec::new();
        write_flow_json(&mut out, r);
        assert_eq!(out.last(), Some(&b'\n'));
        match serde_json::from_slice(&out).expect("valid JSON") {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn flow_json_keys_values_and_escapes() {
        let r = FlowRecord {
            first_seen_us: 1_700_000_000_000_005,
            last_seen_us: -1_500_000,
            client_ip: vec![10, 0, 0, 9],
            server_ip: "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec(),
            client_port: 40000,
            server_port: 502,
            ip_protocol: 6,
            c2s: Some(DirectionCounters {
                packets: 3,
                ip_bytes: 180,
                payload_bytes: 12,
                tcp_flags: 0x1b,
            }),
            s2c: None,
            app_protocol: "modbus".into(),
            vlan: 7,
            end: FlowEnd::TcpClose as i32,
            operations: vec![Operation {
                code: 16,
                name: "we\"ird\\\u{1}\nné".into(),
                class: 2,
                count: u64::MAX,
                errors: 1,
            }],
            indicators: vec!["plc.example".into(), "tab\tq\"".into()],
        };
        let m = parse(&r);
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "client_ip",
                "client_port",
                "server_ip",
                "server_port",
                "transport",
                "ip_protocol",
                "c2s_packets",
                "c2s_bytes",
                "c2s_payload_bytes",
                "c2s_tcp_flags",
                "s2c_packets",
                "s2c_bytes",
                "s2c_payload_bytes",
                "s2c_tcp_flags",
                "first_seen",
                "last_seen",
                "app_protocol",
                "vlan",
                "end",
                "operations",
                "indicators"
            ]
        );
        assert_eq!(m["client_ip"], "10.0.0.9");
        assert_eq!(m["server_ip"], "2001:db8::1");
        assert_eq!(m["transport"], "tcp");
        assert_eq!(m["c2s_tcp_flags"], 0x1b);
        assert_eq!(m["s2c_packets"], 0);
        assert_eq!(m["first_seen"].as_f64(), Some(r.first_seen_us as f64 / 1e6));
        assert_eq!(m["last_seen"].as_f64(), Some(-1.5));
        assert_eq!(m["end"], "tcp_close");
        let op = &m["operations"][0];
        assert_eq!(op["name"], "we\"ird\\\u{1}\nné");
        assert_eq!(op["count"].as_u64(), Some(u64::MAX));
        assert_eq!(m["indicators"][1], "tab\tq\"");
        let unknown = parse(&FlowRecord {
            app_protocol: String::new(),
            ip_protocol: 47,
            client_ip: vec![1, 2, 3],
            ..r
        });
        assert_eq!(unknown["app_protocol"], Value::Null);
        assert_eq!(unknown["transport"], "ip-47");
        assert_eq!(unknown["client_ip"], "010203");
        assert_eq!(unknown["first_seen"].as_f64(), Some(1_700_000_000.000005));
    }

    #[test]
    fn seconds_parse_to_the_division() {
        for us in [
            0i64,
            1,
            999_999,
            1_000_000,
            1_234_567_890_123_456,
            -1,
            -999_999_999,
        ] {
            let mut out = Vec::new();
            write_secs(&mut out, us);
            let v: f64 = std::str::from_utf8(&out).unwrap().parse().unwrap();
            assert_eq!(v, us as f64 / 1e6, "{us}");
        }
    }
}
