//! Operation summaries against the FKIE IPAL transcriber's expected output
//! (`NAME.ipal-expected.ipal` in the corpus: one JSON object per OT message,
//! with its protocol type code). Per flow and per operation code, the
//! sensor's counts must equal the number of IPAL messages.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// Endpoint pair of a flow, unordered: ("ip:port", "ip:port") sorted.
type Pair = (String, String);

fn pair(a: String, b: String) -> Pair {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// "ip:port" of an IPAL `src` or `dest` ("ip:port" or "ip:port:unit").
fn endpoint(s: &str) -> String {
    s.splitn(3, ':').take(2).collect::<Vec<_>>().join(":")
}

/// IPAL messages per (flow, type), filtered and keyed by `key` (which
/// returns None for messages the comparison leaves out).
fn ipal(file: &str, key: impl Fn(&Value) -> Option<String>) -> BTreeMap<(Pair, String), u64> {
    let path = common::corpus().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut m = BTreeMap::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).unwrap();
        let Some(k) = key(&v) else { continue };
        let p = pair(
            endpoint(v["src"].as_str().unwrap()),
            endpoint(v["dest"].as_str().unwrap()),
        );
        *m.entry((p, k)).or_insert(0) += 1;
    }
    m
}

/// The sensor's operation counts per (flow, key of the operation).
fn sensor(
    pcap: &str,
    key: impl Fn(&Value) -> Option<String>,
    count: impl Fn(&Value) -> u64,
) -> BTreeMap<(Pair, String), u64> {
    let flows = common::read_json(&common::corpus().join(pcap), &[]);
    let mut m = BTreeMap::new();
    for f in &flows {
        let p = pair(
            format!("{}:{}", f["client_ip"].as_str().unwrap(), f["client_port"]),
            format!("{}:{}", f["server_ip"].as_str().unwrap(), f["server_port"]),
        );
        for o in f["operations"].as_array().unwrap() {
            let n = count(o);
            if n == 0 {
                continue;
            }
            if let Some(k) = key(o) {
                *m.entry((p.clone(), k)).or_insert(0) += n;
            }
        }
    }
    m
}

fn code(o: &Value) -> Option<String> {
    Some(o["code"].as_u64()?.to_string())
}

fn all(o: &Value) -> u64 {
    o["count"].as_u64().unwrap()
}

fn check(name: &str, want: BTreeMap<(Pair, String), u64>, got: BTreeMap<(Pair, String), u64>) {
    assert!(!want.is_empty(), "{name}: nothing to compare");
    assert_eq!(got, want, "{name}: sensor (left) vs IPAL (right)");
}

#[test]
fn modbus_function_codes_equal_ipal() {
    // Both count every request and every response by function code.
    let want = ipal("modbus/modbus.ipal-expected.ipal", |v| {
        Some(v["type"].as_u64()?.to_string())
    });
    check("modbus", want, sensor("modbus/modbus.pcap", code, all));
}

#[test]
fn dnp3_function_codes_equal_ipal() {
    let want = ipal("dnp3/dnp3.ipal-expected.ipal", |v| {
        Some(v["type"].as_u64()?.to_string())
    });
    check("dnp3", want, sensor("dnp3/dnp3.pcap", code, all));
}

#[test]
fn iec104_asdu_type_ids_equal_ipal() {
    // IPAL names I-format APDUs "I-<type id>"; S and U frames carry no
    // ASDU and are not operations.
    let want = ipal("iec104/ipal-iec104.ipal-expected.ipal", |v| {
        Some(v["type"].as_str()?.strip_prefix("I-")?.to_string())
    });
    check("iec104", want, sensor("iec104/ipal-iec104.pcap", code, all));
}

#[test]
fn nmea_sentence_formatters_equal_ipal() {
    // IPAL types are the sentence formatter ("GGA"); the sensor keeps the
    // talker too ("GPGGA"). Queries ("GGHCQ", asking HC for HDM) are typed by
    // IPAL after the requested sentence: they are compared as queries.
    for (pcap, expected) in [
        (
            "nmea0183/iec450-nmea.pcap",
            "nmea0183/iec450-nmea.ipal-expected.ipal",
        ),
        (
            "nmea0183/nmea0183udp.pcapng",
            "nmea0183/nmea0183udp.ipal-expected.ipal",
        ),
    ] {
        let want = ipal(expected, |v| {
            let t = v["type"].as_str()?;
            Some(if v["activity"] == "interrogate" {
                "query".to_string()
            } else {
                t.to_string()
            })
        });
        let got = sensor(
            pcap,
            |o| {
                let n = o["name"].as_str()?;
                // The 61162-450 framing counts (lower case) are no
                // sentences.
                if n.bytes().any(|b| b.is_ascii_lowercase()) {
                    return None;
                }
                Some(if n.len() == 5 && n.ends_with('Q') {
                    "query".to_string()
                } else {
                    n.get(2..)?.to_string()
                })
            },
            all,
        );
        check(pcap, want, got);
    }
}

#[test]
fn cip_services_equal_ipal_requests() {
    // IPAL types CIP messages by service (76 = Read Tag), requests and
    // replies alike; the sensor counts requests (replies only as errors),
    // including the service embedded in an Unconnected Send.
    let want = ipal("enip/cip.ipal-expected.ipal", |v| {
        (v["activity"] == "interrogate").then(|| (0x100 + v["type"].as_u64().unwrap()).to_string())
    });
    let got = sensor(
        "enip/cip.pcapng",
        |o| {
            let c = o["code"].as_u64()?;
            // CIP services (0x100 | service) other than the Unconnected
            // Send wrapper itself; encapsulation commands are below 0x100.
            (c > 0x100 && c != 0x152).then(|| c.to_string())
        },
        all,
    );
    check("cip", want, got);
}

#[test]
fn s7_jobs_equal_ipal() {
    // IPAL types S7 PDUs by ROSCTR (1 = job); the sensor counts jobs by
    // function (read/write var, ...): their sum per flow is the job count.
    let want = ipal("s7comm/s7.ipal-expected.ipal", |v| {
        (v["type"].as_u64()? == 1).then(|| "job".to_string())
    });
    let got = sensor("s7comm/s7.pcap", |_| Some("job".to_string()), all);
    check("s7", want, got);
    assert!(Path::new(&common::corpus().join("s7comm/s7.pcap")).exists());
}
