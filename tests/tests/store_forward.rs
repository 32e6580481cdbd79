//! Ship-side store-and-forward: batches live in the sensor's disk buffer
//! until the collector acks them, across a kill -9 of the sensor.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use tidewatch_tests::*;

#[test]
fn kill_9_while_the_collector_is_away_loses_nothing() {
    let stack = Stack::start();
    stack.migrate();
    let pki = Pki::new(stack.path().join("pki"));
    let s1 = pki.sensor("s1", "mv-buffer");
    let port = free_port();
    let state = stack.path().join("state");
    let pcap = pcaps().join("dnp3/dnp3_example.pcap");
    let expected = totals(&read_flows(&pcap));

    // No collector yet: the sensor meters everything into its buffer and
    // keeps trying to connect; then it is killed without warning.
    let mut s = sensor_run(
        "sensor-1",
        stack.path(),
        &s1,
        port,
        &pcap,
        &state,
        &["--batch-flows", "2"],
    );
    s.wait_log("cannot connect to collector", Duration::from_secs(30));
    s.kill();
    let stats = run_ok(
        Command::new(bin("tidewatch-sensor"))
            .args(["buffer", "stats", "--state-dir"])
            .arg(&state),
    );
    assert!(stats.contains("0 damaged records"), "{stats}");
    let pending: u64 = stats
        .split(" batches not yet acked")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no backlog in {stats}"));
    assert!(pending >= 6, "only {pending} batches buffered:\n{stats}");
    run_ok(
        Command::new(bin("tidewatch-sensor"))
            .args(["buffer", "check", "--state-dir"])
            .arg(&state),
    );

    // Collector up; the sensor restarts on an empty capture and delivers the
    // backlog from disk.
    let _ingest = stack.ingest(&pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    let empty = stack.path().join("empty.pcap");
    pcapgen::write_udp_flows(&empty, 0, 0, 1_700_000_000).unwrap();
    let mut s2 = sensor_run("sensor-2", stack.path(), &s1, port, &empty, &state, &[]);
    assert!(
        s2.wait(Duration::from_secs(120)).success(),
        "{}",
        s2.log_text()
    );
    assert!(
        s2.log_text()
            .contains("resuming upload of batches buffered before the restart"),
        "{}",
        s2.log_text()
    );
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    expect_flows(&stack, &want);
    assert_eq!(
        ch_totals(&stack, "flows_raw"),
        want,
        "a buffered batch was stored twice"
    );
    // Everything acked: the buffer holds nothing pending any more.
    let after = run_ok(
        Command::new(bin("tidewatch-sensor"))
            .args(["buffer", "stats", "--state-dir"])
            .arg(&state),
    );
    assert!(after.contains(" 0 batches not yet acked"), "{after}");
}

#[test]
fn repeated_kill_9_during_upload_loses_and_duplicates_nothing() {
    let stack = Stack::start();
    stack.migrate();
    let pki = Pki::new(stack.path().join("pki"));
    let s1 = pki.sensor("s1", "mv-kill");
    let port = free_port();
    let _ingest = stack.ingest(&pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    // A slow link so that each kill lands in the middle of the upload.
    let link = tidewatch_tests::linkemu::LinkEmu::start(port);
    link.throttle(6_000);
    let state = stack.path().join("state");
    let pcap = stack.path().join("flows.pcap");
    pcapgen::write_udp_flows(&pcap, 2000, 2, 1_700_000_000).unwrap();
    let expected = totals(&read_flows(&pcap));
    let empty = stack.path().join("empty.pcap");
    pcapgen::write_udp_flows(&empty, 0, 0, 1_700_000_000).unwrap();
    let args = [
        "--batch-flows",
        "20",
        "--window",
        "2",
        "--fsync",
        "every-batch",
    ];

    // First run meters the capture into the buffer; later runs only resume.
    // Each run is killed -9 after a different delay (a fixed pseudo-random
    // sequence keeps the test reproducible).
    let delays_ms = [1700u64, 900, 2300, 1300, 600];
    let mut kills = 0;
    for (i, d) in delays_ms.iter().enumerate() {
        let input = if i == 0 { &pcap } else { &empty };
        let mut s = sensor_run(
            &format!("sensor-{i}"),
            stack.path(),
            &s1,
            link.port,
            input,
            &state,
            &args,
        );
        std::thread::sleep(Duration::from_millis(*d));
        if s.try_wait().is_some() {
            break;
        }
        s.kill();
        kills += 1;
    }
    assert!(
        kills >= 3,
        "only {kills} runs were still uploading when killed"
    );
    link.throttle(0);
    let mut last = sensor_run(
        "sensor-final",
        stack.path(),
        &s1,
        link.port,
        &empty,
        &state,
        &args,
    );
    assert!(
        last.wait(Duration::from_secs(120)).success(),
        "{}",
        last.log_text()
    );
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    expect_flows(&stack, &want);
    let after = run_ok(
        Command::new(bin("tidewatch-sensor"))
            .args(["buffer", "stats", "--state-dir"])
            .arg(&state),
    );
    assert!(
        after.contains(" 0 batches not yet acked") && after.contains("0 damaged records"),
        "{after}"
    );
}

#[test]
fn buffer_cap_during_an_outage_drops_the_oldest_and_reports_it_ashore() {
    let stack = Stack::start();
    stack.migrate();
    let pki = Pki::new(stack.path().join("pki"));
    let s1 = pki.sensor("s1", "mv-outage");
    let port = free_port();
    let state = stack.path().join("state");
    // About 2 MiB of uncompressed batches against a 1 MiB buffer.
    let pcap = stack.path().join("flows.pcap");
    pcapgen::write_udp_flows(&pcap, 30_000, 2, 1_700_000_000).unwrap();
    let expected = totals(&read_flows(&pcap));
    let mut s = sensor_run(
        "sensor",
        stack.path(),
        &s1,
        port,
        &pcap,
        &state,
        &[
            "--buffer-max-mib",
            "1",
            "--no-compress",
            "--batch-flows",
            "500",
        ],
    );
    // The link is down: everything goes to the buffer, which overflows.
    s.wait_log("disk buffer full", Duration::from_secs(60));
    s.wait_log("cannot connect to collector", Duration::from_secs(60));
    // The link comes back.
    let _ingest = stack.ingest(&pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    assert!(
        s.wait(Duration::from_secs(180)).success(),
        "{}",
        s.log_text()
    );

    let dropped = wait_until(Duration::from_secs(60), "the sensor status ashore", || {
        let n = stack.query_u64("SELECT count() FROM tidewatch.sensor_status");
        (n == 1)
            .then(|| stack.query_u64("SELECT max(records_dropped) FROM tidewatch.sensor_status"))
    });
    assert!(dropped > 0, "no drop reported");
    let stored = wait_until(Duration::from_secs(60), "the kept flows", || {
        let n = stack.query_u64("SELECT count() FROM tidewatch.flows");
        (n + dropped == expected.flows).then_some(n)
    });
    assert!(stored > 0);
    // Whole batches are missing (dropped from disk), the newest are there:
    // the final batch carries the last flows and the status.
    let batches = stack.query_u64("SELECT uniqExact(batch_seq) FROM tidewatch.flows");
    assert!(
        batches < expected.flows.div_ceil(500),
        "no batch missing ({batches})"
    );
    assert_eq!(
        stack.query_u64("SELECT max(batch_seq) FROM tidewatch.flows"),
        stack.query_u64("SELECT max(batch_seq) FROM tidewatch.sensor_status"),
        "the newest batches were not kept"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.flows") + dropped,
        expected.flows
    );
}
