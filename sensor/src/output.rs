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

#[derive(serde::Serialize)]
struct OpJson<'a> {
    code: u32,
    name: &'a str,
    class: i32,
    count: u64,
    errors: u64,
}

/// One flow as printed by `read` (field order is the documented interface).
#[derive(serde::Serialize)]
pub struct FlowJson<'a> {
    client_ip: String,
    client_port: u32,
    server_ip: String,
    server_port: u32,
    transport: String,
    ip_protocol: u32,
    c2s_packets: u64,
    c2s_bytes: u64,
    c2s_payload_bytes: u64,
    c2s_tcp_flags: u32,
    s2c_packets: u64,
    s2c_bytes: u64,
    s2c_payload_bytes: u64,
    s2c_tcp_flags: u32,
    first_seen: f64,
    last_seen: f64,
    app_protocol: Option<&'a str>,
    vlan: u32,
    end: &'static str,
    operations: Vec<OpJson<'a>>,
    indicators: &'a [String],
}

/// The JSON form of one flow record.
pub fn flow_json(r: &FlowRecord) -> FlowJson<'_> {
    let c2s = r.c2s.unwrap_or_default();
    let s2c = r.s2c.unwrap_or_default();
    FlowJson {
        client_ip: ip_string(&r.client_ip),
        client_port: r.client_port,
        server_ip: ip_string(&r.server_ip),
        server_port: r.server_port,
        transport: transport_name(r.ip_protocol),
        ip_protocol: r.ip_protocol,
        c2s_packets: c2s.packets,
        c2s_bytes: c2s.ip_bytes,
        c2s_payload_bytes: c2s.payload_bytes,
        c2s_tcp_flags: c2s.tcp_flags,
        s2c_packets: s2c.packets,
        s2c_bytes: s2c.ip_bytes,
        s2c_payload_bytes: s2c.payload_bytes,
        s2c_tcp_flags: s2c.tcp_flags,
        first_seen: secs(r.first_seen_us),
        last_seen: secs(r.last_seen_us),
        app_protocol: (!r.app_protocol.is_empty()).then_some(r.app_protocol.as_str()),
        vlan: r.vlan,
        end: match flow_end_name(r.end) {
            "" => "unspecified",
            name => name,
        },
        operations: r
            .operations
            .iter()
            .map(|o| OpJson {
                code: o.code,
                name: &o.name,
                class: o.class,
                count: o.count,
                errors: o.errors,
            })
            .collect(),
        indicators: &r.indicators,
    }
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
    })
}
