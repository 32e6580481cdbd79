//! Every shore component crashes (SIGKILL) and comes back while a sensor
//! streams: ingest, the sink, the Kafka-protocol broker and ClickHouse.
//! ClickHouse finally holds every flow exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use tidewatch_tests::*;

/// Waits until ClickHouse holds more flows than `n` (the pipeline moves).
fn progress(stack: &Stack, n: u64, what: &str) -> u64 {
    wait_until(Duration::from_secs(120), what, || {
        let m = stack
            .query("SELECT count() FROM tidewatch.flows_raw")
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()?;
        (m > n).then_some(m)
    })
}

#[test]
fn crashes_of_ingest_sink_broker_and_clickhouse_mid_stream_lose_and_duplicate_nothing() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-crashes");
    let port = free_port();
    let mut ingest = stack.ingest(pki, port, &[]);
    // Every sink incarnation joins a consumer group of its own, so it starts
    // from the beginning of the topic and must skip, through the batch
    // ledger, everything its predecessors stored: a harder case than
    // resuming from committed offsets. (Resuming within one group is tested
    // in spine.rs. Here the broker itself is restarted too, and the test
    // broker, tansu 0.6, can leave a group without assignments when its
    // members change around its own restart: seen as a group "Formed" with
    // no assignments, or "Forming" under a leader that is no longer a
    // member. Apache Kafka reassigns after the session timeout.)
    // Each with its metrics, to see its own dedup at work.
    let sink_in_own_group = |name: &str| {
        let mport = free_port();
        let listen = format!("127.0.0.1:{mport}");
        (
            stack.sink(name, &["--group", name, "--metrics-listen", &listen]),
            mport,
        )
    };
    let (mut sink, mut sink_mport) = sink_in_own_group("sink-0");

    // 30000 flows over 30 s of capture time replayed at 0.4x: a steady
    // stream of small batches for 75 s, long enough for two rounds of
    // crashes.
    let pcap = stack.path().join("stream.pcap");
    pcapgen::write_udp_flows(&pcap, 30_000, 2, 1_700_000_000).unwrap();
    let expected = totals(&read_flows_with(&pcap, &["--idle-timeout", "0.5"]));
    let mut s = SensorRun::new(&s1, port, &pcap, &stack.path().join("state"))
        .args(&[
            "--idle-timeout",
            "0.5",
            "--replay-speed",
            "0.4",
            "--batch-flows",
            "100",
            "--ack-timeout",
            "5",
            "--keepalive-secs",
            "2",
        ])
        .spawn("sensor", stack.path());
    let mut n = progress(stack, 0, "first flows stored");

    for round in 1..=2 {
        // 1. ingest crashes and restarts on the same port.
        ingest.kill();
        std::thread::sleep(Duration::from_secs(2));
        ingest = stack.ingest(pki, port, &[]);
        n = progress(stack, n, "flows after the ingest restart");

        // 2. the sink crashes (between any two steps) and a new one takes over.
        sink.kill();
        std::thread::sleep(Duration::from_secs(1));
        (sink, sink_mport) = sink_in_own_group(&format!("sink-{round}"));
        n = progress(stack, n, "flows after the sink restart");

        // 3. the broker crashes; ingest answers "unavailable", the sensor
        // keeps its batches, the sink waits; then the broker is back with
        // its data.
        stack.kill_kafka();
        std::thread::sleep(Duration::from_secs(3));
        stack.start_kafka();
        n = progress(stack, n, "flows after the broker restart");

        // 4. ClickHouse crashes; the sink retries without committing.
        stack.kill_clickhouse();
        std::thread::sleep(Duration::from_secs(3));
        stack.start_clickhouse();
        n = progress(stack, n, "flows after the ClickHouse restart");
    }

    assert!(
        s.try_wait().is_none(),
        "the replay ended before the last crash; the crashes did not all land mid-stream"
    );
    assert!(
        s.wait(Duration::from_secs(300)).success(),
        "{}",
        s.log_text()
    );
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    expect_flows(stack, &want);
    // Every batch the sensor had acked is in the ledger with its flows (a
    // ClickHouse crash mid-insert may leave a raw ledger row twice: the
    // retried insert cannot know the first one landed, so seqs are counted
    // here, and the dedup itself is proven in spine.rs); the sensor did
    // resend across the crashes.
    // The last sink re-read the topic from its start: it skipped, through
    // the ledger, what its predecessors had stored.
    let skipped = metric(sink_mport, "tidewatch_sink_duplicate_batches_skipped_total");
    assert!(
        skipped.is_some_and(|n| n > 0.0),
        "the restarted sink skipped nothing ({skipped:?})"
    );
    let acked = batches_acked(&s.log_text());
    assert_eq!(
        stack.query_u64("SELECT uniqExact(seq) FROM tidewatch.batches"),
        acked,
        "distinct ledger seqs against the batches the sensor had acked"
    );
    assert_eq!(
        stack.query_u64(
            "SELECT sum(f) FROM (SELECT seq, any(flows) AS f FROM tidewatch.batches GROUP BY seq)"
        ),
        expected.flows,
        "flows in the ledger against the flows stored"
    );
    assert!(
        s.log_text().contains("upload stream interrupted"),
        "{}",
        s.log_text()
    );
    drop(ingest);
    sink.terminate();
}
