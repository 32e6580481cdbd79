//! Local inspection output (`tidewatch-sensor read`): one JSON object per flow.
//! The keys are a stable interface used by tests and analysts.

use std::net::IpAddr;

use serde_json::{json, Value};
use tidewatch_proto::v1::{FlowEnd, FlowRecord};

/// Text form of a 4- or 16-byte address; anything else is shown as hex.
pub fn ip_string(b: &[u8]) -> String {
    match b.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(b).expect("len 4")).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(b).expect("len 16")).to_string(),
        _ => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

pub fn transport_name(proto: u32) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => format!("ip-{other}"),
    }
}

pub fn end_name(end: i32) -> &'static str {
    match FlowEnd::try_from(end).unwrap_or(FlowEnd::Unspecified) {
        FlowEnd::IdleTimeout => "idle_timeout",
        FlowEnd::ActiveTimeout => "active_timeout",
        FlowEnd::TcpClose => "tcp_close",
        FlowEnd::Evicted => "evicted",
        FlowEnd::EndOfInput => "end_of_input",
        FlowEnd::Unspecified => "unspecified",
    }
}

fn secs(us: i64) -> f64 {
    us as f64 / 1e6
}

/// The JSON object for one flow record.
pub fn flow_json(r: &FlowRecord) -> Value {
    let c2s = r.c2s.unwrap_or_default();
    let s2c = r.s2c.unwrap_or_default();
    json!({
        "client_ip": ip_string(&r.client_ip),
        "client_port": r.client_port,
        "server_ip": ip_string(&r.server_ip),
        "server_port": r.server_port,
        "transport": transport_name(r.ip_protocol),
        "ip_protocol": r.ip_protocol,
        "c2s_packets": c2s.packets,
        "c2s_bytes": c2s.ip_bytes,
        "c2s_payload_bytes": c2s.payload_bytes,
        "c2s_tcp_flags": c2s.tcp_flags,
        "s2c_packets": s2c.packets,
        "s2c_bytes": s2c.ip_bytes,
        "s2c_payload_bytes": s2c.payload_bytes,
        "s2c_tcp_flags": s2c.tcp_flags,
        "first_seen": secs(r.first_seen_us),
        "last_seen": secs(r.last_seen_us),
        "app_protocol": if r.app_protocol.is_empty() { Value::Null } else { Value::from(r.app_protocol.clone()) },
        "vlan": r.vlan,
        "end": end_name(r.end),
        "operations": r.operations.iter().map(|o| json!({
            "code": o.code, "name": o.name, "class": o.class, "count": o.count, "errors": o.errors,
        })).collect::<Vec<_>>(),
        "indicators": r.indicators,
    })
}
