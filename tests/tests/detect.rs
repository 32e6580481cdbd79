//! Streaming detection against the real broker and ClickHouse: a contact
//! with a threat-intel indicator raises one alert per vessel, indicator and
//! hour, stored once however often the detector reads the batches again,
//! published to the alerts topic, and handled for the record.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message as _};
use serde_json::Value;
use tidewatch_proto::v1::AckStatus;
use tidewatch_tests::grpc::{flow, request_with, upload, ClientCert};
use tidewatch_tests::*;

const STIX: &str = r#"{"type": "bundle", "id": "bundle--1", "objects": [
  {"type": "indicator", "id": "indicator--c2", "name": "crane C2", "valid_from": "2026-11-28T00:00:00Z",
   "pattern": "[ipv4-addr:value = '203.0.113.7'] OR [domain-name:value = 'cdn.bad.example']"}]}"#;

fn flow_to(i: u32, server: Ipv4Addr, names: &[&str]) -> tidewatch_proto::v1::FlowRecord {
    let mut f = flow(i);
    f.server_ip = server.octets().to_vec();
    f.indicators = names.iter().map(|n| n.to_string()).collect();
    f
}

/// The rules of these tests: severity raised, and the tug's contacts with
/// the C2 address suppressed (a known and accepted case).
const RULES: &str = "rules:\n  intel-contact:\n    severity: critical\n    suppress:\n      - vessel: tug-3\n        subject: 203.0.113.7\n        note: sandbox vessel of the CERT, ticket 4711\nscheduled: []\n";

fn detector(stack: &Stack, name: &str, group: &str) -> Proc {
    detector_with(stack, name, group, RULES, &[])
}

fn detector_with(stack: &Stack, name: &str, group: &str, rules_text: &str, extra: &[&str]) -> Proc {
    let rules = stack.path().join(format!("{name}-rules.yaml"));
    std::fs::write(&rules, rules_text).unwrap();
    let mut cmd = stack.collector();
    cmd.args([
        "detect",
        "--group",
        group,
        "--refresh-secs",
        "1",
        "--max-wait-ms",
        "200",
    ])
    .arg("--rules")
    .arg(&rules)
    .args(extra);
    let mut p = Proc::spawn(name, stack.path(), &mut cmd);
    p.wait_log("detector started", Duration::from_secs(60));
    p.wait_log("threat-intel indicators loaded", Duration::from_secs(30));
    p
}

#[test]
fn an_ot_write_from_a_host_not_known_as_an_engineering_station_raises_an_alert() {
    use tidewatch_proto::v1::{AssetObservation, Batch, Operation, OperationClass};
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let s = pki.sensor("bridge-1", "mv-aurora");
    let ip = |last: u8| Ipv4Addr::new(10, 1, 1, last);
    let t0 = flow(0).first_seen_us;
    // What the sensor reported: .30 an engineering station for two days,
    // .88 one since just now (it wrote for the first time).
    let station = |last: u8, first_seen_us: i64| AssetObservation {
        ips: vec![ip(last).octets().to_vec()],
        first_seen_us,
        last_seen_us: t0,
        roles: vec!["engineering_station".into()],
        ..AssetObservation::default()
    };
    let assets = Batch {
        seq: 1,
        assets: vec![station(30, t0 - 2 * 86_400_000_000), station(88, t0)],
        ..Batch::default()
    };
    let req = tidewatch_proto::v1::UploadRequest {
        seq: 1,
        encoding: tidewatch_proto::v1::Encoding::Protobuf as i32,
        payload: prost::Message::encode_to_vec(&assets),
    };
    let acks = upload(port, &s.ca, Some(ClientCert::of(&s)), vec![req]).unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");
    wait_until(Duration::from_secs(60), "assets stored", || {
        (stack.query_u64("SELECT count() FROM tidewatch.assets") == 2).then_some(())
    });
    let rules = "rules:\n  ot-write:\n    severity: critical\n    engineering_hosts:\n      mv-aurora: [10.1.1.31]\nscheduled: []\n";
    let _det = detector_with(stack, "detect", "tidewatch-detect", rules, &[]);

    let op = |class: OperationClass, name: &str| Operation {
        code: 6,
        name: name.into(),
        class: class as i32,
        count: 1,
        errors: 0,
    };
    let from = |i: u32, last: u8, ops: Vec<Operation>| {
        let mut f = flow(i);
        f.client_ip = ip(last).octets().to_vec();
        f.app_protocol = "modbus".into();
        f.operations = ops;
        f
    };
    let write = || {
        vec![
            op(OperationClass::Read, "read_holding_registers"),
            op(OperationClass::Write, "write_single_register"),
        ]
    };
    let flows = vec![
        from(0, 30, write()), // a known station
        from(1, 31, write()), // listed in the rules
        from(2, 66, write()), // unknown: alert
        from(3, 66, vec![op(OperationClass::Program, "program_download")]), // same host, hour: same alert
        from(4, 77, vec![op(OperationClass::Read, "read_coils")]),          // reads only
        from(5, 88, write()),                                               // a newcomer: alert
    ];
    let acks = upload(
        port,
        &s.ca,
        Some(ClientCert::of(&s)),
        vec![request_with(2, flows)],
    )
    .unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");
    wait_until(Duration::from_secs(60), "two ot-write alerts", || {
        (stack.query_u64("SELECT count() FROM tidewatch.alerts WHERE rule = 'ot-write'") == 2)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        stack
            .query("SELECT rule, severity, vessel, subject FROM tidewatch.alerts ORDER BY subject")
            .unwrap(),
        "ot-write\tcritical\tmv-aurora\t10.1.1.66\not-write\tcritical\tmv-aurora\t10.1.1.88\n"
    );
    let summary = stack
        .query("SELECT summary FROM tidewatch.alerts WHERE subject = '10.1.1.66'")
        .unwrap();
    assert!(
        summary.contains("write_single_register") && summary.contains("modbus"),
        "{summary}"
    );
}

/// The distinct keys of the alerts topic.
fn published(stack: &Stack) -> BTreeSet<String> {
    stack
        .topic_records("tidewatch.alerts.v1")
        .iter()
        .map(|m| String::from_utf8(m.key().unwrap().to_vec()).unwrap())
        .collect()
}

#[test]
fn an_intel_contact_raises_one_alert_stored_once_and_handled_for_the_record() {
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let feed = stack.path().join("cert.json");
    std::fs::write(&feed, STIX).unwrap();
    run_ok(stack.collector().args(["intel", "load"]).arg(&feed));
    // A rules file with a mistake is refused with its place.
    let bad = stack.path().join("bad-rules.yaml");
    std::fs::write(&bad, RULES.replace("critical", "severe")).unwrap();
    let out = stack
        .collector()
        .args(["detect", "--check-rules"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 3, column"),
        "{err}"
    );
    let good = stack.path().join("good-rules.yaml");
    std::fs::write(&good, RULES).unwrap();
    let ok = run_ok(
        stack
            .collector()
            .args(["detect", "--check-rules"])
            .arg(&good),
    );
    assert!(
        ok.contains("severity critical") && ok.contains("1 suppression(s)"),
        "{ok}"
    );
    let mut det = detector(stack, "detect", "tidewatch-detect");

    let c2 = Ipv4Addr::new(203, 0, 113, 7);
    let normal = Ipv4Addr::new(10, 1, 0, 10);
    let bridge = pki.sensor("bridge-1", "mv-aurora");
    let crane = pki.sensor("crane-2", "port-of-kiel");
    let tug = pki.sensor("tug-3", "tug-3");
    // bridge-1: the same indicator three times in one hour, over two
    // batches; crane-2: the domain (as seen, in capitals).
    let sends = [
        (
            &bridge,
            1,
            vec![
                flow_to(0, c2, &[]),
                flow_to(1, normal, &[]),
                flow_to(2, c2, &[]),
            ],
        ),
        (&bridge, 2, vec![flow_to(30, c2, &[])]),
        // Suppressed by the rules file: no alert.
        (&tug, 1, vec![flow_to(0, c2, &[])]),
        (
            &crane,
            1,
            vec![
                flow_to(0, normal, &["CDN.Bad.Example"]),
                flow_to(1, normal, &[]),
            ],
        ),
    ];
    for (cert, seq, flows) in sends {
        let acks = upload(
            port,
            &cert.ca,
            Some(ClientCert::of(cert)),
            vec![request_with(seq, flows)],
        )
        .unwrap();
        assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");
    }
    // A forged record with a contact under bridge-1's name: not ingest's,
    // so no alert.
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", stack.kafka_brokers())
        .create()
        .unwrap();
    let forged = tidewatch_proto::v1::IngestedBatch {
        sensor_id: "bridge-1".into(),
        vessel: "mv-forged".into(),
        seq: 99,
        received_us: 1,
        encoding: tidewatch_proto::v1::Encoding::Protobuf as i32,
        payload: request_with(99, vec![flow_to(0, c2, &[])]).payload,
        ingest_node: "x".into(),
    };
    p.send(
        BaseRecord::<[u8], [u8]>::to(tidewatch_proto::BATCHES_TOPIC)
            .key(b"bridge-1")
            .payload(&prost::Message::encode_to_vec(&forged)),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();

    let count = |table: &str| stack.query_u64(&format!("SELECT count() FROM tidewatch.{table}"));
    wait_until(Duration::from_secs(60), "two alerts", || {
        (count("alerts") == 2).then_some(())
    });
    det.wait_log(
        "record refused, not checked for alerts",
        Duration::from_secs(10),
    );
    let rows = stack
        .query(
            "SELECT rule, severity, vessel, sensor_id, subject, state FROM tidewatch.alerts ORDER BY vessel",
        )
        .unwrap();
    assert_eq!(
        rows,
        "intel-contact\tcritical\tmv-aurora\tbridge-1\t203.0.113.7\topen\n\
         intel-contact\tcritical\tport-of-kiel\tcrane-2\tcdn.bad.example\topen\n"
    );
    let ids: BTreeSet<String> = stack
        .query("SELECT id FROM tidewatch.alerts")
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // The earliest contact of the hour is the evidence.
    let evidence = stack
        .query("SELECT evidence FROM tidewatch.alerts WHERE vessel = 'mv-aurora'")
        .unwrap();
    let ev: Value = serde_json::from_str(evidence.trim()).unwrap();
    assert_eq!(
        (ev["batch_seq"].as_u64(), ev["record_idx"].as_u64()),
        (Some(1), Some(0)),
        "{ev}"
    );

    // Read everything again (a detector of a new group, from the start):
    // the same alerts, raised again under the same ids, stored once.
    assert!(det.terminate().is_some_and(|s| s.success()));
    let raw_before = count("alerts_raw");
    let mut again = detector(stack, "detect-again", "tidewatch-detect-rerun");
    again.wait_log("alert raised", Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "alerts raised again", || {
        (count("alerts_raw") >= raw_before + 2).then_some(())
    });
    assert_eq!(count("alerts"), 2);
    assert_eq!(published(stack), ids, "the topic carries other ids");

    // Handling, for the record: who, when, a note, never overwritten.
    let mv = stack
        .query("SELECT id FROM tidewatch.alerts WHERE vessel = 'mv-aurora'")
        .unwrap()
        .trim()
        .to_string();
    let alerts = |args: &[&str]| {
        let out = stack.collector().arg("alerts").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = alerts(&[
        "ack",
        &mv,
        "--who",
        "alice",
        "--note",
        "bridge PC isolated, imaging disk",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = alerts(&[
        "close",
        &mv,
        "--who",
        "bob",
        "--note",
        "malware removed; see case 42",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = alerts(&["ack", "0000", "--who", "alice", "--note", "x"]);
    assert!(!ok && out.contains("no alert"), "{out}");
    let (ok, out) = alerts(&["close", &mv, "--who", "bob"]);
    assert!(!ok && out.contains("--note"), "{out}");
    let (ok, show) = alerts(&["show", &mv]);
    assert!(ok, "{show}");
    let v: Value = serde_json::from_str(&show).unwrap();
    let h: Vec<(&str, &str)> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["action"].as_str().unwrap(), x["who"].as_str().unwrap()))
        .collect();
    assert_eq!(h, vec![("acknowledged", "alice"), ("closed", "bob")]);
    assert_eq!(v["evidence"]["matched"], "203.0.113.7");
    let list = |state: &str| {
        let (ok, out) = alerts(&[
            "list",
            "--since",
            "2023-11-14",
            "--until",
            "2023-11-16",
            "--format",
            "json",
            "--state",
            state,
        ]);
        assert!(ok, "{out}");
        let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
        rows.iter()
            .map(|r| r["vessel"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(list("closed"), vec!["mv-aurora"]);
    assert_eq!(list("open"), vec!["port-of-kiel"]);
}

/// The alert ids in received syslog messages, with how often each came.
fn received_ids(lines: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut ids = std::collections::BTreeMap::new();
    for l in lines {
        let id = l
            .split("[tidewatch@32473 id=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no alert id in {l:?}"));
        *ids.entry(id.to_string()).or_insert(0) += 1;
    }
    ids
}

/// Loads a list feed of `n` C2 addresses (203.0.113.1..n) and returns them.
fn load_c2_list(stack: &Stack, n: u8) -> Vec<Ipv4Addr> {
    let c2: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(203, 0, 113, i)).collect();
    let feed = stack.path().join("list.txt");
    let text: String = c2.iter().map(|ip| format!("{ip}, C2 node\n")).collect();
    std::fs::write(&feed, text).unwrap();
    run_ok(stack.collector().args(["intel", "load"]).arg(&feed));
    c2
}

/// Uploads batch `seq` of sensor `s`: one flow to each of `ips`.
fn contact_from(port: u16, s: &SensorCert, seq: u64, ips: &[Ipv4Addr]) {
    let flows = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| flow_to(i as u32, *ip, &[]))
        .collect();
    let acks = upload(
        port,
        &s.ca,
        Some(ClientCert::of(s)),
        vec![request_with(seq, flows)],
    )
    .unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");
}

fn deliverer(stack: &Stack, name: &str, port: u16, extra: &[&str]) -> Proc {
    let mut cmd = stack.collector();
    cmd.args([
        "deliver",
        "--name",
        name,
        "--syslog",
        &format!("127.0.0.1:{port}"),
    ])
    .args(extra);
    let mut p = Proc::spawn(&format!("deliver-{name}"), stack.path(), &mut cmd);
    p.wait_log("delivery started", Duration::from_secs(60));
    p
}

#[test]
fn alerts_reach_a_real_syslog_receiver_once_each_across_its_crash() {
    use tidewatch_tests::syslog::Rsyslog;
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    // Five indicators: each contact below raises its own alert.
    let c2 = load_c2_list(stack, 5);
    let _det = detector(stack, "detect", "tidewatch-detect");
    let mut rsyslog = Rsyslog::start(&stack.path().join("rsyslog"));
    let mut soc = deliverer(stack, "soc", rsyslog.port, &[]);
    let s = pki.sensor("bridge-1", "mv-aurora");
    let contact = |seq: u64, ips: &[Ipv4Addr]| contact_from(port, &s, seq, ips);
    contact(1, &c2[..3]);
    wait_until(Duration::from_secs(60), "three alerts received", || {
        (received_ids(&rsyslog.messages()).len() == 3).then_some(())
    });

    // The receiver crashes; two more alerts wait (retried) until it is back.
    rsyslog.kill();
    contact(2, &c2[3..]);
    soc.wait_log("alert not delivered; retrying", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    rsyslog.restart();
    wait_until(Duration::from_secs(60), "five alerts received", || {
        (received_ids(&rsyslog.messages()).len() == 5).then_some(())
    });

    // Restarted, and with every alert raised again in the topic (a second
    // detector over the same batches), the destination sends none twice.
    assert!(soc.terminate().is_some());
    let mut again = detector(stack, "detect-again", "tidewatch-detect-rerun");
    again.wait_log("alert raised", Duration::from_secs(60));
    let mut soc = deliverer(stack, "soc", rsyslog.port, &[]);
    wait_until(Duration::from_secs(60), "the copies read", || {
        soc.log_text().contains("delivery started").then_some(())
    });
    // A second destination in CEF gets every alert once as well.
    let mut siem = deliverer(stack, "siem", rsyslog.port, &["--syslog-format", "cef"]);
    wait_until(Duration::from_secs(60), "five CEF alerts", || {
        let cef = rsyslog
            .messages()
            .iter()
            .filter(|l| l.contains("CEF:0|tidewatch|"))
            .count();
        (cef == 5).then_some(())
    });
    // And a third over TLS (RFC 5425), the receiver's certificate checked.
    let tls = Rsyslog::start_with(
        &stack.path().join("rsyslog-tls"),
        Some((
            pki.dir.join("ca.pem"),
            pki.dir.join("server.pem"),
            pki.dir.join("server-key.pem"),
        )),
    );
    let ca = pki.dir.join("ca.pem").display().to_string();
    let mut secure = deliverer(
        stack,
        "soc-tls",
        tls.port,
        &[
            "--syslog-tls",
            "--syslog-ca",
            &ca,
            "--syslog-server-name",
            "localhost",
        ],
    );
    wait_until(Duration::from_secs(60), "five alerts over TLS", || {
        (received_ids(&tls.messages()).len() == 5).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let lines = rsyslog.messages();
    let ids = received_ids(&lines);
    assert_eq!(ids.len(), 5);
    assert!(
        ids.values().all(|&n| n == 2),
        "an alert came twice to one destination: {ids:?}"
    );
    let json: Vec<&String> = lines.iter().filter(|l| !l.contains("CEF:0|")).collect();
    assert_eq!(json.len(), 5);
    for l in &json {
        // local4.crit: the rules file makes these critical.
        assert!(l.starts_with("<162>1 2023-11-14T22:13:20"), "{l}");
        let body: Value = serde_json::from_str(l.split_once("] ").unwrap().1).unwrap();
        assert_eq!(body["rule"], "intel-contact");
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(received_ids(&tls.messages()).values().all(|&n| n == 1));
    assert!(
        soc.terminate().is_some() && siem.terminate().is_some() && secure.terminate().is_some()
    );
    assert!(soc.log_text().contains("delivery stopped"));
}

/// A request the receiver got: headers (names lowercased), body, the
/// status it answered.
type Received = (BTreeMap<String, String>, Vec<u8>, u16);

/// A webhook receiver: answers 503 to the first `fail_first` requests, then
/// 200, and keeps every request.
struct Receiver {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let got: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
        let g = got.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut headers = BTreeMap::new();
                let mut line = String::new();
                let _ = r.read_line(&mut line); // request line
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let mut all = g.lock().unwrap();
                let status = if all.len() < fail_first { 503 } else { 200 };
                all.push((headers, body, status));
                drop(all);
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            }
        });
        Receiver { port, got }
    }
}

#[test]
fn alerts_reach_a_webhook_signed_once_each_after_it_recovers() {
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let c2 = load_c2_list(stack, 3);
    let _det = detector(stack, "detect", "tidewatch-detect");
    // The receiver fails its first two requests (a case tool restarting).
    let hook = Receiver::start(2);
    let secret = stack.path().join("hook.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    // A malformed header is refused at start with its flag.
    let out = stack
        .collector()
        .args([
            "deliver",
            "--name",
            "cases",
            "--webhook",
            "http://127.0.0.1:1/",
        ])
        .args(["--webhook-header", "no colon here"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--webhook-header \"no colon here\""),
        "{err}"
    );
    // A record on the alerts topic that is not an alert is skipped, and
    // holds nothing back.
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", stack.kafka_brokers())
        .create()
        .unwrap();
    p.send(
        BaseRecord::<[u8], [u8]>::to("tidewatch.alerts.v1")
            .key(b"x")
            .payload(b"{\"truncated\": "),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let mut cmd = stack.collector();
    cmd.args(["deliver", "--name", "cases", "--webhook"])
        .arg(format!(
            "http://127.0.0.1:{}/hooks/tidewatch?team=soc",
            hook.port
        ))
        .arg("--webhook-secret-file")
        .arg(&secret)
        .args(["--webhook-header", "Authorization: Bearer t0ken"]);
    let mut d = Proc::spawn("deliver-cases", stack.path(), &mut cmd);
    d.wait_log("delivery started", Duration::from_secs(60));
    let s = pki.sensor("bridge-1", "mv-aurora");
    contact_from(port, &s, 1, &c2);
    wait_until(Duration::from_secs(60), "three alerts accepted", || {
        let n = hook
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.2 == 200)
            .count();
        (n == 3).then_some(())
    });
    d.wait_log("alert not delivered; retrying", Duration::from_secs(1));
    d.wait_log("not an alert; skipped", Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(2));
    let got = hook.got.lock().unwrap().clone();
    assert_eq!(got.len(), 5, "2 refused + 3 accepted");
    let mut ids = BTreeSet::new();
    for (h, body, status) in &got {
        let v: Value = serde_json::from_slice(body).unwrap();
        let id = v["id"].as_str().unwrap();
        assert_eq!(h["idempotency-key"], id);
        assert_eq!(h["x-tidewatch-alert-id"], id);
        assert_eq!(h["authorization"], "Bearer t0ken");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(
            h["x-tidewatch-signature"],
            tidewatch_collector::deliver::webhook::signature(b"s3cret", body)
        );
        if *status == 200 {
            assert!(ids.insert(id.to_string()), "{id} accepted twice");
        }
    }
    assert_eq!(ids.len(), 3);
}

/// Today's midnight (UTC), Unix seconds; when it is less than 5 minutes
/// ahead, waits past it first (the test's scheduled windows end there).
fn midnight_clear_of_the_test() -> i64 {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let next = now - now % 86_400 + 86_400;
        if next - now > 300 {
            return now - now % 86_400;
        }
        std::thread::sleep(Duration::from_secs((next - now + 5) as u64));
    }
}

#[test]
fn the_synthetic_fleet_raises_one_alert_per_planted_anomaly_delivered_once_across_a_detector_crash()
{
    use tidewatch_collector::detect::rules::DEFAULT_SCHEDULED;
    use tidewatch_tests::fleet::{Loaded, Spec};
    use tidewatch_tests::syslog::Rsyslog;
    // The fleet's last day is yesterday (UTC): the window the daily
    // scheduled queries evaluate first.
    let midnight = midnight_clear_of_the_test();
    let loaded = Loaded::start(Spec {
        start_s: midnight - 3 * 86_400,
        ..Spec::default()
    });
    let (stack, fleet) = (&loaded.stack, &loaded.fleet);
    let t = &fleet.truth;
    assert_eq!(t.window_start_s, midnight - 86_400);
    let sched: String = DEFAULT_SCHEDULED
        .iter()
        .map(|q| format!("  - {{query: {q}, every_secs: 86400, window_secs: 86400}}\n"))
        .collect();
    let rules = format!("rules:\n  new-device:\n    zones: [ot, crew]\nscheduled:\n{sched}");
    let mut rsyslog = Rsyslog::start(&stack.path().join("rsyslog"));
    let _soc = deliverer(stack, "soc", rsyslog.port, &[]);

    // Killed (SIGKILL) while it works through the fleet in chunks of two
    // records, once it has raised its first alerts.
    let mut first = detector_with(
        stack,
        "detect-1",
        "detect-1",
        &rules,
        &["--max-records", "2"],
    );
    first.wait_log("alert raised", Duration::from_secs(120));
    first.kill();
    let before = stack.query_u64("SELECT count() FROM tidewatch.alerts");
    // Restarted in a group of its own (the test broker never expires the
    // dead member, see restarts.rs), it reads the whole topic again and
    // runs the schedule again: every alert raised again, under its id.
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let _second = detector_with(
        stack,
        "detect-2",
        "detect-2",
        &rules,
        &["--metrics-listen", &listen],
    );
    // Every batch is one record (the topic's offsets count transaction
    // markers too).
    let records = stack.query_u64("SELECT count() FROM tidewatch.batches") as f64;
    wait_until(Duration::from_secs(120), "the topic read again", || {
        (http::metric(mport, "tidewatch_detect_kafka_records_total").unwrap_or(0.0) >= records)
            .then_some(())
    });

    // Every planted anomaly: one alert of its rule and vessel, keyed as
    // the truth lists it; nothing on the baseline.
    let vessel_of: BTreeMap<&str, &str> = fleet
        .sensors
        .iter()
        .map(|s| (s.sensor_id.as_str(), s.vessel.as_str()))
        .collect();
    let mut want: BTreeSet<(String, String)> = BTreeSet::new();
    let mut add = |rule: &str, key: String| want.insert((rule.to_string(), key));
    let devices = t.new_assets.iter().map(|(v, ip)| (v, ip));
    for (v, ip) in devices.chain(t.changed_vendors.iter().map(|(v, ip, _, _)| (v, ip))) {
        add("new-device", format!("{v} {ip}"));
    }
    for (v, c, _) in &t.unexpected_ot_writes {
        add("ot-write", format!("{v} {c}"));
    }
    for (v, c, _) in &t.segmentation_breaks {
        add("zone-crossing", format!("{v} {c}"));
    }
    for (v, d) in &t.new_destinations {
        add("query:new-destinations", format!("{v} {d}"));
    }
    for (v, _, d, _) in &t.volume_spikes {
        add("query:volume-spikes", format!("{v} {d}"));
    }
    for (v, c, d) in &t.beacons {
        add(
            "query:beaconing",
            format!("{v} {c} {}", d.replace(':', " ")),
        );
    }
    for (v, c) in &t.scans {
        add("query:scans", format!("{v} {c}"));
    }
    for (d, _) in &t.campaigns {
        add("query:campaigns", format!("* {d}"));
    }
    for (id, what) in &t.sensor_health {
        add(
            "query:sensor-health",
            format!("{} {id} {what}", vessel_of[id.as_str()]),
        );
    }
    let stored = || -> Vec<Value> {
        stack
            .query_tidewatch(
                "SELECT id, rule, vessel, subject, evidence FROM alerts FORMAT JSONEachRow",
            )
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let key = |a: &Value| -> (String, String) {
        let (rule, vessel, subject) = (
            a["rule"].as_str().unwrap(),
            a["vessel"].as_str().unwrap(),
            a["subject"].as_str().unwrap(),
        );
        let k = match rule {
            "new-device" => {
                let e: Value = serde_json::from_str(a["evidence"].as_str().unwrap()).unwrap();
                format!("{vessel} {}", e["ips"][0].as_str().unwrap())
            }
            "zone-crossing" => format!("{vessel} {}", subject.split(' ').next().unwrap()),
            _ => format!("{vessel} {subject}"),
        };
        (rule.to_string(), k)
    };
    let alerts = wait_until(
        Duration::from_secs(60),
        "every planted anomaly's alert",
        || {
            let a = stored();
            (a.len() >= want.len()).then_some(a)
        },
    );
    let mut got: BTreeMap<(String, String), usize> = BTreeMap::new();
    for a in &alerts {
        *got.entry(key(a)).or_default() += 1;
    }
    let missed: Vec<_> = want.iter().filter(|k| !got.contains_key(k)).collect();
    let extra: Vec<_> = got.iter().filter(|(k, _)| !want.contains(k)).collect();
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{} planted anomalies, {} alerts ({before} before the crash); missed {missed:?}, on the baseline {extra:?}, twice {twice:?}",
        want.len(),
        alerts.len()
    );
    assert!(missed.is_empty() && extra.is_empty() && twice.is_empty());

    // At the syslog receiver: every alert, each once.
    let ids: BTreeSet<String> = alerts
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    let received = wait_until(
        Duration::from_secs(60),
        "every alert at the receiver",
        || {
            let r = received_ids(&rsyslog.messages());
            (r.len() >= ids.len()).then_some(r)
        },
    );
    assert_eq!(received.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert!(received.values().all(|n| *n == 1), "{received:?}");
    rsyslog.kill();
}
