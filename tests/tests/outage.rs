//! ClickHouse down for a while: the sink retries, commits nothing meanwhile,
//! and stores everything exactly once when ClickHouse is back.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tidewatch_tests::*;

const TOPIC: &str = "tidewatch.batches.v1";

/// (committed offsets, high watermarks) summed over the topic's partitions.
fn offsets(brokers: &str, group: &str) -> (i64, i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    let mut high = 0;
    for p in &parts {
        tpl.add_partition(TOPIC, *p);
        high += c
            .fetch_watermarks(TOPIC, *p, Duration::from_secs(10))
            .expect("watermarks")
            .1;
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    let sum = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    (sum, high)
}

#[test]
fn clickhouse_down_sink_retries_and_commits_only_after_insert() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-outage");
    let port = free_port();
    let _ingest = stack.ingest(pki, port, &[]);
    let mut sink = stack.sink("sink", &[]);
    let brokers = stack.kafka_brokers();

    stack.stop_clickhouse();
    let pcap = pcaps().join("dnp3/dnp3_example.pcap");
    let expected = totals(&read_flows(&pcap));
    let mut s = SensorRun::new(&s1, port, &pcap, &stack.path().join("state"))
        .args(&["--batch-flows", "2"])
        .spawn("sensor", stack.path());
    assert!(
        s.wait(Duration::from_secs(120)).success(),
        "acks must not depend on ClickHouse:\n{}",
        s.log_text()
    );

    // The sink is failing and retrying; nothing is committed meanwhile.
    wait_until(Duration::from_secs(60), "sink retries", || {
        let log = sink.log_text();
        let failures = log.matches("ClickHouse write failed").count()
            + log
                .matches("ClickHouse read of the batch ledger failed")
                .count();
        (failures >= 3).then_some(())
    });
    let (committed, high) = offsets(&brokers, "tidewatch-sink");
    assert!(high > 0, "nothing reached Kafka");
    assert_eq!(committed, 0, "offsets committed while ClickHouse was down");
    assert!(sink.try_wait().is_none(), "sink gave up");

    stack.start_clickhouse();
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    expect_flows(stack, &want);
    wait_until(
        Duration::from_secs(60),
        "offsets committed after the insert",
        || {
            let (c, h) = offsets(&brokers, "tidewatch-sink");
            (c == h).then_some(())
        },
    );
    sink.wait_log("succeeded after retries", Duration::from_secs(10));
    // The batches stayed in Kafka through the outage and were stored once
    // each: the raw ledger (no insert reached the stopped server, so no
    // retry can have doubled one) against what the sensor had acked.
    let acked = batches_acked(&s.log_text());
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.batches"),
        acked,
        "raw ledger rows against the batches the sensor had acked"
    );
    assert_eq!(
        stack.query_u64("SELECT sum(flows) FROM tidewatch.batches"),
        expected.flows,
        "flows in the raw ledger against the flows stored"
    );
    // A clean stop after all that.
    let st = sink.terminate().expect("sink stopped on SIGTERM");
    assert!(st.success(), "{}", sink.log_text());
    assert!(sink.log_text().contains("sink stopped"));
}
