//! The daily byte budget on a metered link: when it is tight, sensor status
//! and assets go first, then flows with OT write/control operations, then
//! bulk flows; the rest waits on disk for the next (time-compressed) day and
//! nothing is lost or counted twice.

use std::collections::BTreeMap;
use std::time::Duration;

use tidewatch_tests::*;

const OT: &str = "hasAny(op_classes, ['write', 'control', 'program'])";

/// received_at (Unix seconds) of the batches whose seqs `sql` selects.
/// `column` of the ledger rows of the batches whose seqs `sql` selects
/// (one sensor: its batches share one partition, so Kafka offsets give
/// their order exactly).
fn ledger(stack: &Stack, column: &str, sql: &str) -> Vec<u64> {
    stack
        .query(&format!(
            "SELECT {column} FROM tidewatch.batches FINAL WHERE seq IN ({sql}) ORDER BY seq"
        ))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn a_tight_budget_sends_status_assets_and_ot_writes_before_bulk_flows() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-vsat");
    let port = free_port();
    let state = stack.path().join("state");
    let pcap = pcaps().join("bacnet/bacnet_example.pcap");
    let flows = read_flows(&pcap);
    let expected = totals(&flows);
    let writes = flows
        .iter()
        .filter(|f| {
            f["operations"].as_array().is_some_and(|ops| {
                ops.iter()
                    .any(|o| matches!(o["class"].as_u64(), Some(2..=4)))
            })
        })
        .count() as u64;
    assert!(
        writes > 5 && writes < expected.flows,
        "{writes} OT-write flows"
    );

    // 1. Meter while the collector is away, then stop: every batch of the
    // capture is on disk, in its class, before the budget decides.
    let mut s = SensorRun::new(&s1, port, &pcap, &state)
        .args(&[
            "--batch-flows",
            "5",
            // Sized on uncompressed protobuf batches.
            "--no-compress",
            "--batch-layout",
            "protobuf",
        ])
        .spawn("sensor-1", stack.path());
    s.wait_log("capture metered", Duration::from_secs(30));
    s.wait_log("cannot connect to collector", Duration::from_secs(30));
    let st = s.terminate().expect("sensor stops on SIGTERM");
    assert!(st.success(), "{}", s.log_text());
    assert!(
        s.log_text()
            .contains("stopping; unacknowledged batches stay in the disk buffer"),
        "{}",
        s.log_text()
    );

    // 2. The link is back but the budget lets about four small batches
    // through per 2-second "day".
    let _ingest = stack.ingest(pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    let empty = stack.path().join("empty.pcap");
    pcapgen::write_udp_flows(&empty, 0, 0, 1_700_000_000).unwrap();
    let mut s2 = SensorRun::new(&s1, port, &empty, &state)
        .args(&[
            "--no-compress",
            // Sized on uncompressed protobuf batches.
            "--batch-layout",
            "protobuf",
            "--daily-budget-bytes",
            "2500",
            "--budget-reserve-percent",
            "20",
            "--budget-period-secs",
            "2",
        ])
        .spawn("sensor-2", stack.path());
    assert!(
        s2.wait(Duration::from_secs(240)).success(),
        "{}",
        s2.log_text()
    );
    assert!(
        s2.log_text().contains("daily byte budget reached"),
        "the budget never held anything back:\n{}",
        s2.log_text()
    );

    // Exactly once, in spite of the wait.
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    expect_flows(stack, &want);
    assert_eq!(ch_totals(stack, "flows_raw"), want);
    wait_until(Duration::from_secs(30), "both status records", || {
        (stack.query_u64("SELECT count() FROM tidewatch.sensor_status") == 2).then_some(())
    });

    // Priority: every control batch (status, assets) and every OT-write
    // batch reached Kafka before the first bulk batch (by offset), and the
    // upload was spread over several budget periods (by receive time).
    let control_sql = "SELECT seq FROM tidewatch.batches FINAL WHERE flows = 0";
    let ot_sql = format!("SELECT DISTINCT batch_seq FROM tidewatch.flows WHERE {OT}");
    let bulk_sql = format!("SELECT DISTINCT batch_seq FROM tidewatch.flows WHERE NOT {OT}");
    let control = ledger(stack, "kafka_offset", control_sql);
    let ot = ledger(stack, "kafka_offset", &ot_sql);
    let bulk = ledger(stack, "kafka_offset", &bulk_sql);
    assert!(control.len() >= 2 && !ot.is_empty() && !bulk.is_empty());
    let first_bulk = *bulk.iter().min().unwrap();
    assert!(
        control.iter().chain(&ot).all(|o| *o < first_bulk),
        "priority order broken (Kafka offsets): control {control:?} ot-write {ot:?} bulk {bulk:?}"
    );
    let time = |sql: &str| ledger(stack, "toUInt32(received_at)", sql);
    let (first, last) = (
        time(control_sql)
            .into_iter()
            .chain(time(&ot_sql))
            .min()
            .unwrap(),
        time(&bulk_sql).into_iter().max().unwrap(),
    );
    let span = last - first;
    assert!(
        span >= 4,
        "upload took only {span} s: the budget did not pace it"
    );
    // OT-write flows travel in batches of their own.
    assert_eq!(
        stack.query_u64(&format!("SELECT count() FROM tidewatch.flows WHERE {OT}")),
        writes
    );
    assert_eq!(
        stack.query_u64(&format!(
            "SELECT count() FROM tidewatch.flows WHERE batch_seq IN \
             (SELECT batch_seq FROM tidewatch.flows WHERE {OT}) AND NOT {OT}"
        )),
        0,
        "bulk flows mixed into OT-write batches"
    );

    // The status reports the budget and its use.
    let status = stack
        .query(
            "SELECT daily_byte_budget, bytes_sent_today FROM tidewatch.sensor_status \
             ORDER BY observed_us DESC LIMIT 1",
        )
        .unwrap();
    let mut it = status.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    assert_eq!(it.next(), Some(2500), "{status}");
    assert!(
        it.next().is_some_and(|used| used <= 2500),
        "bytes sent today beyond the budget: {status}"
    );
}

#[test]
fn resends_are_held_to_the_budget_too() {
    // Kafka goes away: ingest answers every batch "unavailable, retry"
    // after its Kafka timeout, so the sensor sends the same batches again
    // and again. Each resend costs link bytes; none may go past the budget
    // (without the cap, 20,862 bytes went out against 12,000 in 20 s).
    let budget = 12_000u64;
    let shore = Shore::builder()
        .ingest(&["--kafka-timeout-ms", "1000"])
        .start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    stack.stop_kafka();
    let s1 = pki.sensor("s1", "mv-vsat");
    let mport = free_port();
    let pcap = pcaps().join("bacnet/bacnet_example.pcap");
    let mut s = SensorRun::new(&s1, shore.port, &pcap, &stack.path().join("state"))
        .args(&[
            "--batch-flows",
            "5",
            "--no-compress",
            // Sized on uncompressed protobuf batches.
            "--batch-layout",
            "protobuf",
            "--daily-budget-bytes",
            &budget.to_string(),
            "--metrics-listen",
            &format!("127.0.0.1:{mport}"),
        ])
        .spawn("sensor", stack.path());
    s.wait_log("resends wait for the next period", Duration::from_secs(90));
    let used = |what: &str| -> f64 {
        metric(mport, "tidewatch_sensor_uplink_budget_used_bytes")
            .unwrap_or_else(|| panic!("no budget metric {what}"))
    };
    // A resend was due and held back (whether the first sends had used
    // the budget up before the first one depends on timing).
    let at_cap = used("at the cap");
    for _ in 0..20 {
        let u = used("later");
        assert!(
            u <= budget as f64,
            "budget {budget} exceeded: {u} bytes sent today"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(at_cap > 0.0 && at_cap <= budget as f64, "{at_cap}");
    let st = s.terminate().expect("sensor stops on SIGTERM");
    assert!(st.success(), "{}", s.log_text());
}
