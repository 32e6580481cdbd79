//! Hostile input against the real pipeline (sensor, ingest, broker, sink,
//! ClickHouse 18.16): what a host on the watched network can send must end
//! with every flow stored exactly once, or its loss counted and reported
//! ashore, and every process still serving.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tidewatch_tests::pcapgen::write_dns_flood_then_modbus;
use tidewatch_tests::{
    bin, deliver_buffered, expect_flows, free_port, http_get, read_flows, run_ok, totals,
    SensorRun, Shore, Totals,
};

/// Ingest with its metrics on a free port: (shore, metrics port).
fn shore_with_ingest_metrics(extra: &[&str]) -> (Shore, u16) {
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let mut args = vec!["--metrics-listen", listen.as_str()];
    args.extend_from_slice(extra);
    (Shore::builder().ingest(&args).sink(&[]).start(), mport)
}

/// Ingest's `tidewatch_ingest_refused_total` by reason (reasons with 0 left out).
fn refused(mport: u16) -> BTreeMap<String, f64> {
    let text = http_get(mport, "/metrics").expect("ingest metrics");
    text.lines()
        .filter_map(|l| l.strip_prefix("tidewatch_ingest_refused_total{reason=\""))
        .filter_map(|l| {
            let (reason, rest) = l.split_once('"')?;
            let v: f64 = rest.rsplit_once(' ')?.1.parse().ok()?;
            (v > 0.0).then(|| (reason.to_string(), v))
        })
        .collect()
}

/// `tidewatch-sensor buffer set-aside ...` on a state directory.
fn set_aside(state: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new(bin("tidewatch-sensor"))
            .args(["buffer", "--state-dir"])
            .arg(state)
            .arg("set-aside")
            .args(args),
    )
}

/// The flows `read` reports for the capture, checked to be what the
/// generator made: `dns` DNS conversations with 16 names each, then 200
/// Modbus polls.
fn expected(pcap: &Path, dns: usize) -> Totals {
    let flows = read_flows(pcap);
    let by = |p: &str| flows.iter().filter(|f| f["app_protocol"] == p).count();
    assert_eq!(
        (by("dns"), by("modbus"), flows.len()),
        (dns, 200, dns + 200)
    );
    assert!(flows
        .iter()
        .filter(|f| f["app_protocol"] == "dns")
        .all(|f| f["indicators"].as_array().map(Vec::len) == Some(16)));
    totals(&flows)
}

#[test]
fn flows_carrying_the_most_indicators_are_sealed_under_the_limit_and_stored_once() {
    let (shore, mport) = shore_with_ingest_metrics(&[]);
    let (stack, port) = (&shore.stack, shore.port);
    let cert = shore.pki.sensor("dns-flood", "mv-hostile");
    let pcap = stack.path().join("dns-flood.pcap");
    write_dns_flood_then_modbus(&pcap, 4000, 16, 200, 1_700_000_000).unwrap();
    let want = expected(&pcap, 4000);
    let state = stack.path().join("state");
    let mut s = SensorRun::new(&cert, port, &pcap, &state).spawn("sensor", stack.path());
    let st = s.wait(Duration::from_secs(180));
    let log = s.log_text();
    assert!(st.success(), "sensor failed:\n{log}");
    // Sealed small enough: the collector refused nothing and nothing was
    // split or set aside.
    assert!(
        log.contains("batches_refused=0 batches_set_aside=0"),
        "{log}"
    );
    assert_eq!(refused(mport), BTreeMap::new(), "ingest refused batches");
    expect_flows(stack, &BTreeMap::from([("dns-flood".to_string(), want)]));
}

#[test]
fn batches_over_the_collectors_limits_are_split_and_every_flow_stored_once() {
    // The sensor is configured above the collector: its batch of 4,000 such
    // flows breaks the gRPC stream (over ingest's message limit), the halves
    // are refused as too large, their halves go in.
    let (shore, mport) = shore_with_ingest_metrics(&[]);
    let (stack, port) = (&shore.stack, shore.port);
    let cert = shore.pki.sensor("dns-flood", "mv-hostile");
    let pcap = stack.path().join("dns-flood.pcap");
    write_dns_flood_then_modbus(&pcap, 4000, 16, 200, 1_700_000_000).unwrap();
    let want = expected(&pcap, 4000);
    let state = stack.path().join("state");
    let mut s = SensorRun::new(&cert, port, &pcap, &state)
        .args(&["--batch-flows", "4000", "--batch-max-bytes", "8000000"])
        .spawn("sensor", stack.path());
    let st = s.wait(Duration::from_secs(180));
    let log = s.log_text();
    assert!(st.success(), "sensor failed:\n{log}");
    assert!(
        log.contains("over its message limit") && log.contains("split into smaller ones"),
        "{log}"
    );
    assert!(log.contains("batches_set_aside=0"), "{log}");
    let r = refused(mport);
    assert!(
        r.contains_key("too_large") && r.contains_key("bad_grpc_message") && r.len() == 2,
        "{r:?}"
    );
    expect_flows(stack, &BTreeMap::from([("dns-flood".to_string(), want)]));
    // Ingest still serves: another sensor's upload goes through.
    let other = shore.pki.sensor("bridge", "mv-hostile");
    let modbus = tidewatch_tests::pcaps().join("modbus/modbus_example.pcap");
    let mut s = SensorRun::new(&other, port, &modbus, &stack.path().join("state-2"))
        .spawn("sensor-2", stack.path());
    assert!(
        s.wait(Duration::from_secs(60)).success(),
        "{}",
        s.log_text()
    );
}

#[test]
fn what_cannot_be_split_enough_is_set_aside_reported_ashore_and_retried_once() {
    // Ingest takes at most 1,000 bytes per batch: one such DNS flow alone
    // is larger, the Modbus flows fit once split small enough.
    let shore = Shore::builder()
        .ingest(&["--max-batch-bytes", "1000"])
        .sink(&[])
        .start();
    let (stack, port) = (&shore.stack, shore.port);
    let cert = shore.pki.sensor("dns-flood", "mv-hostile");
    let pcap = stack.path().join("dns-flood.pcap");
    write_dns_flood_then_modbus(&pcap, 40, 16, 200, 1_700_000_000).unwrap();
    let want = expected(&pcap, 40);
    let state = stack.path().join("state");
    let mut s = SensorRun::new(&cert, port, &pcap, &state).spawn("sensor", stack.path());
    let st = s.wait(Duration::from_secs(180));
    let log = s.log_text();
    assert!(
        !st.success(),
        "a run with batches set aside must fail:\n{log}"
    );
    assert!(
        log.contains("40 batch(es) (40 flows) are set aside"),
        "{log}"
    );
    let list = set_aside(&state, &["list"]);
    assert!(list.contains("40 batch(es) set aside, 40 flows"), "{list}");
    assert!(list.contains("ACK_STATUS_TOO_LARGE"), "{list}");
    let seq: u64 = list
        .lines()
        .next()
        .and_then(|l| l.split("seq ").nth(1))
        .and_then(|r| r.split('\t').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seq in:\n{list}"));
    let shown = set_aside(&state, &["show", &seq.to_string()]);
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(shown.contains("\"app_protocol\":\"dns\""), "{shown}");
    // Only the Modbus flows are stored so far; the sensor's next status
    // (the next start) reports what it holds, with the reason.
    let modbus = want.flows - 40;
    deliver_or_fail(&shore, &cert, &state, "sensor-again");
    let reported = stack
        .query(
            "SELECT batches_set_aside, records_set_aside, set_aside_reason \
             FROM tidewatch.sensor_status ORDER BY observed_us DESC LIMIT 1",
        )
        .unwrap();
    assert!(
        reported.starts_with("40\t40\tACK_STATUS_TOO_LARGE"),
        "{reported}"
    );
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.flows"),
        modbus
    );
    // The operator raises the collector's limit and retries: every flow
    // goes up exactly once.
    let mut shore = shore;
    drop(shore.ingest.take());
    shore.ingest = Some(stack_ingest(&shore));
    let out = set_aside(&state, &["retry"]);
    assert!(out.contains("put 40 set-aside batch(es) back"), "{out}");
    assert!(set_aside(&state, &["list"]).contains("0 batch(es) set aside"));
    deliver_buffered(&cert, port, &state, "sensor-retried", shore.stack.path());
    expect_flows(
        &shore.stack,
        &BTreeMap::from([("dns-flood".to_string(), want)]),
    );
}

/// The sensor on an empty capture, which fails (batches are set aside)
/// after delivering what it can.
fn deliver_or_fail(shore: &Shore, cert: &tidewatch_tests::SensorCert, state: &Path, name: &str) {
    let empty = shore.stack.path().join(format!("{name}.pcap"));
    tidewatch_tests::pcapgen::write_udp_flows(&empty, 0, 0, 1_700_000_000).unwrap();
    let mut s = SensorRun::new(cert, shore.port, &empty, state).spawn(name, shore.stack.path());
    let st = s.wait(Duration::from_secs(60));
    assert!(
        !st.success() && s.log_text().contains("are set aside"),
        "{}",
        s.log_text()
    );
    // Its status batch is stored before the check below.
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while shore
        .stack
        .query_u64("SELECT count() FROM tidewatch.sensor_status WHERE batches_set_aside > 0")
        == 0
    {
        assert!(
            std::time::Instant::now() < end,
            "no status with the set-aside batches"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ingest again on the shore's port, with its default limits.
fn stack_ingest(shore: &Shore) -> tidewatch_tests::Proc {
    shore.stack.ingest(&shore.pki, shore.port, &[])
}
