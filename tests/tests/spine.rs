//! The spine end to end: sensors -> mTLS gRPC -> ingest -> Kafka -> sink ->
//! ClickHouse, with real processes and real services.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tidewatch_tests::*;

/// Sum of packets and IP bytes over tshark's conversations for a capture
/// (the independent oracle in `NAME.expected.json`).
fn tshark_totals(pcap: &std::path::Path) -> (u64, u64) {
    let stem = pcap.file_stem().unwrap().to_str().unwrap();
    let exp = pcap.with_file_name(format!("{stem}.expected.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exp).unwrap()).unwrap();
    let mut p = 0;
    let mut b = 0;
    for c in v["conversations"].as_array().unwrap() {
        for d in ["c2s", "s2c"] {
            p += c[d]["packets"].as_u64().unwrap();
            b += c[d]["ip_bytes"].as_u64().unwrap();
        }
    }
    (p, b)
}

/// Flow identity + counters, for comparing sets of flows.
type FlowKey = (String, u64, String, u64, String, u64, u64, u64, u64, i64);

fn json_key(f: &serde_json::Value) -> FlowKey {
    (
        f["client_ip"].as_str().unwrap().to_string(),
        f["client_port"].as_u64().unwrap(),
        f["server_ip"].as_str().unwrap().to_string(),
        f["server_port"].as_u64().unwrap(),
        f["transport"].as_str().unwrap().to_string(),
        f["c2s_packets"].as_u64().unwrap(),
        f["c2s_bytes"].as_u64().unwrap(),
        f["s2c_packets"].as_u64().unwrap(),
        f["s2c_bytes"].as_u64().unwrap(),
        (f["first_seen"].as_f64().unwrap() * 1e6).round() as i64,
    )
}

fn ch_keys(stack: &Stack, sensor: &str) -> Vec<FlowKey> {
    let out = stack
        .query(&format!(
            "SELECT client_ip, client_port, server_ip, server_port, transport, c2s_packets, c2s_bytes, \
             s2c_packets, s2c_bytes, first_seen_us FROM tidewatch.flows WHERE sensor_id = '{sensor}'"
        ))
        .unwrap();
    let mut v: Vec<FlowKey> = out
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (
                c[0].into(),
                c[1].parse().unwrap(),
                c[2].into(),
                c[3].parse().unwrap(),
                c[4].into(),
                c[5].parse().unwrap(),
                c[6].parse().unwrap(),
                c[7].parse().unwrap(),
                c[8].parse().unwrap(),
                c[9].parse().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn two_sensors_every_flow_exactly_once() {
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let a = pki.sensor("crane-a", "port-of-kiel");
    let b = pki.sensor("bridge-b", "mv-aurora");

    let corpus = pcaps();
    let plan: [(&str, &SensorCert, Vec<PathBuf>); 2] = [
        (
            "crane-a",
            &a,
            vec![
                corpus.join("modbus/modbus_example.pcap"),
                corpus.join("enip/enip_cip_example.pcap"),
            ],
        ),
        (
            "bridge-b",
            &b,
            vec![
                corpus.join("dnp3/dnp3_example.pcap"),
                corpus.join("bacnet/bacnet_example.pcap"),
                corpus.join("nmea0183/second.pcapng"),
            ],
        ),
    ];
    let mut expected: BTreeMap<String, Totals> = BTreeMap::new();
    let mut expected_keys: BTreeMap<String, Vec<FlowKey>> = BTreeMap::new();
    for (id, cert, files) in &plan {
        let state = stack.path().join(format!("state-{id}"));
        for (i, f) in files.iter().enumerate() {
            let flows = read_flows(f);
            let t = totals(&flows);
            // The sensor's metering agrees with tshark on every capture used.
            assert_eq!(
                (t.packets, t.bytes),
                tshark_totals(f),
                "metering of {} differs from tshark",
                f.display()
            );
            let e = expected.entry(id.to_string()).or_default();
            e.flows += t.flows;
            e.packets += t.packets;
            e.bytes += t.bytes;
            expected_keys
                .entry(id.to_string())
                .or_default()
                .extend(flows.iter().map(json_key));
            // Small batches so that each capture spans several batches.
            let mut s = SensorRun::new(cert, port, f, &state)
                .args(&["--batch-flows", "25"])
                .spawn(&format!("sensor-{id}-{i}"), stack.path());
            let st = s.wait(Duration::from_secs(120));
            assert!(st.success(), "sensor {id} failed:\n{}", s.log_text());
            assert!(s.log_text().contains("upload complete"));
        }
    }
    for v in expected_keys.values_mut() {
        v.sort();
    }
    expect_flows(stack, &expected);
    // Nothing was stored twice.
    assert_eq!(
        ch_totals(stack, "flows_raw"),
        expected,
        "duplicates in the raw table without any resend"
    );
    for (id, keys) in &expected_keys {
        assert_eq!(
            &ch_keys(stack, id),
            keys,
            "flows of {id} differ from what the sensor metered"
        );
    }
    // Identity comes from the certificate: vessels are the ones issued.
    let vessels = stack
        .query("SELECT DISTINCT sensor_id, vessel FROM tidewatch.flows ORDER BY sensor_id")
        .unwrap();
    assert_eq!(vessels, "bridge-b\tmv-aurora\ncrane-a\tport-of-kiel\n");
    // The asset inventory travelled with the flows.
    assert!(
        stack.query_u64("SELECT count() FROM tidewatch.assets WHERE has(roles, 'controller') AND vessel = 'port-of-kiel'") > 0,
        "no controller among the assets of crane-a"
    );
    // So did what a device said of itself (EtherNet/IP ListIdentity).
    assert_eq!(
        stack
            .query(
                "SELECT device_vendor, product, firmware, serial, identity_protocol \
                 FROM tidewatch.assets_latest WHERE vessel = 'port-of-kiel' AND ip = '10.1.1.164'"
            )
            .unwrap(),
        "CIP vendor 1\t1756-ENBT/A\t4.3\t0x00524d8e\tenip\n"
    );
    // Each sensor sent its status at the end of every run.
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.sensor_status"),
        5
    );
    // The top-talkers query works on the data.
    let out = run_ok(stack.collector().args([
        "query",
        "top-talkers",
        "--since",
        "2000-01-01",
        "--limit",
        "3",
        "--format",
        "csv",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("vessel,sensor_id,client_ip"), "{out}");
    assert_eq!(lines.len(), 1 + 3 * 2, "3 rows per vessel expected:\n{out}");
}

#[test]
fn resent_batches_and_sink_crash_between_insert_and_commit_count_once() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-dup");
    // Keep duplicate parts visible: without merges, the raw tables show every
    // insert (rows and ledger), and only the FINAL view may hide duplicates.
    for t in ["flows_raw", "batches"] {
        stack
            .query(&format!("SYSTEM STOP MERGES tidewatch.{t}"))
            .unwrap();
    }
    let port = free_port();
    let _ingest = stack.ingest(pki, port, &[]);
    let pcap = pcaps().join("dnp3/dnp3_example.pcap");
    let expected = totals(&read_flows(&pcap));

    // Every batch goes to Kafka twice: the sensor resends all acked batches.
    let mut s = SensorRun::new(&s1, port, &pcap, &stack.path().join("state"))
        .args(&["--batch-flows", "3", "--resend-acked"])
        .spawn("sensor", stack.path());
    assert!(
        s.wait(Duration::from_secs(120)).success(),
        "{}",
        s.log_text()
    );
    assert!(s.log_text().contains("duplicate batches acked"));
    let sent_batches = batches_acked(&s.log_text());

    // A sink that dies after inserting, before writing the ledger and
    // committing: the next sink consumes the same records again.
    let mut crashing = stack.sink("sink-crash", &["--fault-exit-after-insert"]);
    let st = crashing.wait(Duration::from_secs(120));
    assert_eq!(st.code(), Some(70), "{}", crashing.log_text());
    let raw_after_crash = stack.query_u64("SELECT count() FROM tidewatch.flows_raw");
    assert!(raw_after_crash > 0, "the crashing sink inserted nothing");

    let mport = free_port();
    let sink = stack.sink("sink", &["--metrics-listen", &format!("127.0.0.1:{mport}")]);
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    // Only the second sink writes the ledger: wait until it has skipped
    // every resent copy (it first waits for the crashed member's Kafka
    // session to expire; the copies come after the originals in the
    // sensor's partition).
    wait_until(
        Duration::from_secs(120),
        "the restarted sink skipping every resent batch",
        || {
            let skipped = metric(mport, "tidewatch_sink_duplicate_batches_skipped_total")?;
            (skipped as u64 >= sent_batches).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    // The sink's own dedup, seen directly: each acked batch in the raw
    // ledger exactly once with its flows, each resent copy skipped once.
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.batches"),
        sent_batches,
        "raw ledger rows against the batches the sensor had acked"
    );
    assert_eq!(
        stack.query_u64("SELECT sum(flows) FROM tidewatch.batches"),
        expected.flows,
        "flows in the raw ledger"
    );
    assert_eq!(
        metric(mport, "tidewatch_sink_duplicate_batches_skipped_total"),
        Some(sent_batches as f64),
        "duplicates skipped by the restarted sink"
    );
    assert_eq!(
        ch_totals(stack, "flows"),
        want,
        "query results count a flow twice"
    );
    // The raw rows: the crashed sink's insert, then every flow exactly once
    // from the restarted sink (so the view, not luck, removed the crashed
    // sink's duplicates, and the sink itself stored nothing twice).
    let raw = stack.query_u64("SELECT count() FROM tidewatch.flows_raw");
    assert_eq!(
        raw,
        raw_after_crash + expected.flows,
        "raw rows (after crash {raw_after_crash})\ncrash:\n{}\nsink:\n{}",
        crashing.log_text(),
        sink.log_text()
    );
    // After merging, the raw table itself holds each flow once.
    stack
        .query("SYSTEM START MERGES tidewatch.flows_raw")
        .unwrap();
    for p in stack.query("SELECT DISTINCT partition FROM system.parts WHERE database='tidewatch' AND table='flows_raw' AND active").unwrap().lines() {
        stack.query(&format!("OPTIMIZE TABLE tidewatch.flows_raw PARTITION {p} FINAL")).unwrap();
    }
    assert_eq!(ch_totals(stack, "flows_raw"), want);
}

#[test]
fn ingest_sigterm_drains_and_sensor_resumes_on_a_new_ingest() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-drain");
    let port = free_port();
    let mut ingest = stack.ingest(pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    let pcap = stack.path().join("many.pcap");
    pcapgen::write_udp_flows(&pcap, 3000, 2, 1_700_000_000).unwrap();
    let expected = totals(&read_flows(&pcap));
    assert_eq!(expected.flows, 3000);

    // One flow per batch: thousands of batches, so the upload is in full
    // swing when ingest is told to stop.
    let mut s = SensorRun::new(&s1, port, &pcap, &stack.path().join("state"))
        .args(&["--batch-flows", "1", "--window", "4"])
        .spawn("sensor", stack.path());
    ingest.wait_log("upload stream opened", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let st = ingest.terminate().expect("ingest stopped on SIGTERM");
    assert!(st.success(), "ingest exit {st}:\n{}", ingest.log_text());
    let log = ingest.log_text();
    assert!(
        log.contains("SIGTERM received; draining") && log.contains("ingest stopped"),
        "{log}"
    );
    assert!(
        s.try_wait().is_none(),
        "sensor finished before the restart; the test did not interrupt anything"
    );

    let _ingest2 = stack.ingest(pki, port, &[]);
    assert!(
        s.wait(Duration::from_secs(180)).success(),
        "{}",
        s.log_text()
    );
    assert!(
        s.log_text().contains("upload stream interrupted"),
        "{}",
        s.log_text()
    );

    // The drain protocol: the stream ended with UNAVAILABLE (the sensor
    // reconnects elsewhere) after the batches in flight were acked, so the
    // sensor resent nothing Kafka already had: the topic holds each batch
    // exactly once (a batch written but not acked before the stream ended
    // would be in it twice).
    assert!(
        s.log_text().contains("collector is shutting down"),
        "{}",
        s.log_text()
    );
    let acked = batches_acked(&s.log_text());
    assert_eq!(
        stack.kafka_records("tidewatch.batches.v1") as u64,
        acked,
        "records in Kafka against the batches the sensor had acked"
    );
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    expect_flows(stack, &want);
}

/// A capture cut short in the middle of a record (a killed tcpdump): `run`
/// uploads every flow metered before the cut, then exits non-zero naming the
/// record's offset.
#[test]
fn a_capture_cut_short_uploads_every_flow_before_the_cut_then_fails() {
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let c = pki.sensor("s-cut", "mv-cut");

    let whole = stack.path().join("whole.pcap");
    pcapgen::write_udp_flows(&whole, 500, 2, 1_700_000_000).unwrap();
    let all = totals(&read_flows(&whole));
    let bytes = std::fs::read(&whole).unwrap();
    let cut = stack.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    // The last packet (Ethernet 14 + IP bytes) is incomplete; its record
    // header starts that many bytes plus 16 before the end.
    let last_ip_bytes = 28 + 32;
    let cut_at = bytes.len() - 16 - 14 - last_ip_bytes;

    let mut s = SensorRun::new(&c, port, &cut, &stack.path().join("state"))
        .args(&["--batch-flows", "50"])
        .spawn("sensor", stack.path());
    let st = s.wait(Duration::from_secs(120));
    let log = s.log_text();
    assert!(!st.success(), "{log}");
    assert!(
        log.contains(&format!("corrupt capture at byte {cut_at}"))
            && log.contains("their 500 flows uploaded"),
        "{log}"
    );
    let mut want = BTreeMap::new();
    want.insert(
        "s-cut".to_string(),
        Totals {
            flows: all.flows,
            packets: all.packets - 1,
            bytes: all.bytes - last_ip_bytes as u64,
        },
    );
    expect_flows(stack, &want);
}

/// The first promise: ingest acks a batch only once Kafka has it. A batch
/// sent while the broker is down gets no ack for as long as it is down (the
/// sensor keeps it); the Accepted ack comes only after the broker is back,
/// and the batch is stored once.
#[test]
fn no_ack_while_kafka_is_down_then_acked_and_stored_once() {
    use std::time::Instant;
    use tidewatch_proto::v1::AckStatus;
    use tidewatch_tests::grpc::{request, upload, ClientCert};

    // The sink starts only once the broker is back: tansu's group
    // coordinator (the test broker) can break its storage when a consumer
    // group is active around its restart (see the README). The outage stays
    // shorter than ingest's Kafka timeout: tansu 0.6 panics on the producer
    // epoch bump that follows a timed-out message.
    let shore = Shore::builder().ingest(&[]).start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let s = pki.sensor("s1", "mv-ack");
    let accepted = |acks: &[tidewatch_proto::v1::UploadAck]| {
        acks.len() == 1 && AckStatus::try_from(acks[0].status) == Ok(AckStatus::Accepted)
    };
    let send = |seq: u64| {
        let cert = s.clone();
        std::thread::spawn(move || {
            let c = ClientCert::of(&cert);
            let acks = upload(port, &cert.ca, Some(c), vec![request(seq, 5, "")]);
            (acks, Instant::now())
        })
    };
    let (acks, _) = send(1).join().unwrap();
    assert!(accepted(&acks.unwrap()), "the first batch was not acked");

    stack.stop_kafka();
    let pending = send(2);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !pending.is_finished(),
        "answered while Kafka was down: {:?}",
        pending.join().unwrap().0
    );
    let back = Instant::now();
    stack.start_kafka();
    let (acks, at) = pending.join().unwrap();
    let acks = acks.unwrap();
    assert!(accepted(&acks), "{acks:?}");
    assert!(at > back, "acked before the broker was back");

    let _sink = stack.sink("sink", &[]);
    wait_until(
        Duration::from_secs(90),
        "both batches in ClickHouse",
        || (stack.query_u64("SELECT count() FROM tidewatch.flows") == 10).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stack.query_u64("SELECT count() FROM tidewatch.flows"), 10);
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.batches"),
        2,
        "each batch stored once"
    );
}
