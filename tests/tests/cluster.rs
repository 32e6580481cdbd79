//! The shore on a ClickHouse cluster (`stack.sh start-cluster`: ZooKeeper
//! and 2 shards × 2 replicas of ClickHouse 18.16), migrated with
//! `migrate --cluster`, fed by two ingest replicas behind one address and
//! three sinks in one consumer group, through crashes of a replica,
//! ZooKeeper, an ingest and a sink.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tidewatch_tests::fleet::{self, Loaded, Spec};
use tidewatch_tests::linkemu::LinkEmu;
use tidewatch_tests::*;

/// Runs `f` once the test is `at` into its course (no sooner).
fn at(start: Instant, secs: u64, f: impl FnOnce()) {
    let when = start + Duration::from_secs(secs);
    if let Some(d) = when.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
    f();
}

/// `SELECT count(), sum(...)` of a local table, FINAL, on node `n` (after
/// it has fetched every part its shard's replication log names).
fn local_totals(stack: &Stack, n: usize, table: &str, sums: &str) -> String {
    stack
        .node_query(n, &format!("SYSTEM SYNC REPLICA tidewatch.{table}"))
        .unwrap_or_else(|e| panic!("node {n}: sync {table}: {e}"));
    stack
        .node_query(
            n,
            &format!("SELECT count(), {sums} FROM tidewatch.{table} FINAL"),
        )
        .unwrap_or_else(|e| panic!("node {n}: {table}: {e}"))
}

#[test]
fn a_fleet_streams_into_a_cluster_exactly_once_through_crashes_of_a_replica_zookeeper_an_ingest_and_a_sink(
) {
    let stack = Stack::start_cluster();
    stack.migrate();
    let pki = Pki::new(stack.path().join("pki"));
    let ports = [free_port(), free_port()];
    let mut ingests: Vec<Proc> = ports.iter().map(|p| stack.ingest(&pki, *p, &[])).collect();
    let balancer = LinkEmu::balance(&ports);
    // Each sink under a stable name (static group membership): one that
    // crashes and restarts gets its partitions back.
    let sink = |i: usize| {
        let name = format!("sink-{i}");
        stack.sink(&name, &["--kafka-group-instance-id", &name])
    };
    let mut sinks: Vec<Proc> = (1..=3).map(sink).collect();

    let sensors = [("s1", "mv-one"), ("s2", "mv-two"), ("s3", "mv-three")];
    let mut want = BTreeMap::new();
    let mut runs = Vec::new();
    for (i, (id, vessel)) in sensors.iter().enumerate() {
        let cert = pki.sensor(id, vessel);
        let pcap = paced_capture(
            &stack.path().join(format!("{id}.pcap")),
            30,
            1_700_000_000 + i as u32 * 100_000,
        );
        want.insert(
            id.to_string(),
            totals(&read_flows_with(&pcap, &["--idle-timeout", "0.5"])),
        );
        let state = stack.path().join(format!("state-{id}"));
        runs.push(
            SensorRun::new(&cert, balancer.port, &pcap, &state)
                .args(PACED_RUN)
                .spawn(&format!("sensor-{id}"), stack.path()),
        );
    }

    let start = Instant::now();
    // A replica of shard 1 crashes; the other takes its inserts and reads.
    at(start, 4, || stack.kill_node(2));
    // An ingest crashes; its sensors reconnect through the balancer to the
    // other one and resend what was not acked.
    at(start, 7, || ingests[0].kill());
    // ZooKeeper crashes: the replicated tables turn read-only, the sinks'
    // inserts fail and are retried, nothing is committed meanwhile.
    at(start, 10, || stack.kill_zookeeper());
    at(start, 16, || stack.start_zookeeper());
    // A sink crashes and restarts (as Kubernetes restarts its container):
    // it takes up its partitions from their last commit, and what it had
    // stored but not committed is skipped as already stored.
    at(start, 19, || sinks[1].kill());
    at(start, 21, || sinks[1] = sink(2));
    let mut node_back = Instant::now();
    at(start, 22, || {
        stack.start_node(2);
        node_back = Instant::now();
    });

    let mut reconnects = 0;
    for (s, (id, _)) in runs.iter_mut().zip(&sensors) {
        assert!(
            s.wait(Duration::from_secs(180)).success(),
            "sensor {id}:\n{}",
            s.log_text()
        );
        let log = s.log_text();
        reconnects += log
            .split("reconnects=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no reconnects= in the log of {id}:\n{log}"));
    }
    // Every flow once, counted through the Distributed views.
    expect_flows(&stack, &want);
    // The crashed replica caught up with its shard.
    let sums = "sum(c2s_bytes), sum(s2c_packets)";
    wait_until(Duration::from_secs(120), "node 2 to catch up", || {
        (local_totals(&stack, 2, "flows_raw_local", sums)
            == local_totals(&stack, 1, "flows_raw_local", sums))
        .then_some(())
    });
    eprintln!(
        "node 2 caught up {:.1} s after its restart",
        node_back.elapsed().as_secs_f64()
    );

    // The faults happened, and were met as designed: the ingest's sensors
    // reconnected to the other one, inserts were refused while ZooKeeper
    // was away (and retried, offsets uncommitted), the restarted sink was
    // given partitions again.
    assert!(
        reconnects >= 1,
        "no sensor reconnected after the ingest crash"
    );
    let sink_logs: String = (1..=3)
        .map(|i| std::fs::read_to_string(stack.path().join(format!("sink-{i}.log"))).unwrap())
        .collect();
    assert!(
        sink_logs.contains("offsets stay uncommitted"),
        "no insert was refused while ZooKeeper was down"
    );
    let sink2 = std::fs::read_to_string(stack.path().join("sink-2.log")).unwrap();
    assert!(
        sink2.matches("sink started").count() == 2
            && sink2
                .rsplit("sink started")
                .next()
                .is_some_and(|after| after.contains("partitions assigned")),
        "the restarted sink got no partitions:\n{sink2}"
    );

    // The two replicas of each shard agree, and both shards hold data.
    let mut shards = Vec::new();
    for (table, sums) in [
        ("flows_raw_local", "sum(c2s_bytes), sum(s2c_packets)"),
        ("batches_local", "sum(flows), sum(seq)"),
        ("dest_hourly_raw_local", "sum(flows), sum(c2s_bytes)"),
    ] {
        for (a, b) in [(1, 2), (3, 4)] {
            let (ta, tb) = (
                local_totals(&stack, a, table, sums),
                local_totals(&stack, b, table, sums),
            );
            assert_eq!(ta, tb, "{table}: nodes {a} and {b} differ");
            shards.push(ta);
        }
    }
    assert!(
        !shards[0].starts_with("0\t") && !shards[1].starts_with("0\t"),
        "a shard holds no flows: {shards:?}"
    );
    drop(sinks);
    drop(ingests);
}

/// Every query of the pack over the fleet's last day, as JSON rows (sorted:
/// rows a query ranks equal may come in any order from several shards).
fn pack_results(stack: &Stack, since: i64) -> BTreeMap<&'static str, Vec<String>> {
    tidewatch_collector::query::pack::PACK
        .iter()
        .map(|q| {
            let out = run_ok(
                stack
                    .collector()
                    .args(["query", q.name, "--format", "json"])
                    .args(["--since", &since.to_string()])
                    .args(["--until", &(since + 86_400).to_string()]),
            );
            let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim())
                .unwrap_or_else(|e| panic!("{}: not a JSON array ({e}):\n{out}", q.name));
            let mut rows: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
            rows.sort();
            (q.name, rows)
        })
        .collect()
}

#[test]
fn the_query_pack_answers_on_a_cluster_as_on_one_server_and_retention_drops_on_every_shard() {
    let single = Loaded::start(Spec::default());
    let cluster = Loaded::start_cluster(Spec::default());
    let since = single.fleet.truth.window_start_s;
    let (one, many) = (
        pack_results(&single.stack, since),
        pack_results(&cluster.stack, since),
    );
    for (name, rows) in &one {
        assert_eq!(&many[name], rows, "{name} differs on the cluster");
    }
    // Not vacuous: the pack finds the planted anomalies (checked against
    // the ground truth in queries.rs), so most queries return rows.
    let answered = one.values().filter(|r| !r.is_empty()).count();
    assert!(
        answered >= 8,
        "only {answered} queries returned rows: {one:?}"
    );

    // A database migrated for the cluster is not migrated as a single
    // server's (nor the reverse).
    let out = cluster
        .stack
        .collector()
        .env_remove("TIDEWATCH_CLICKHOUSE_CLUSTER")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was migrated for a cluster"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = single
        .stack
        .collector()
        .args(["migrate", "--cluster", "tidewatch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was migrated for a single server"));
    // A cluster name that is no name, or one the servers do not know, is
    // refused before any statement runs.
    let refused = |args: &[&str], needle: &str| {
        let out = cluster.stack.collector().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
    };
    refused(
        &["migrate", "--cluster", "fleet'; DROP"],
        "use letters, digits and underscores",
    );
    refused(
        &["migrate", "--cluster", "nope"],
        "cluster nope is not in this server's remote_servers",
    );
    refused(
        &["maintenance", "retention", "--cluster", "x' OR 1"],
        "use letters, digits and underscores",
    );
    // ALTERs run on one node of each shard: a node list that misses a
    // shard is refused before anything is dropped, naming what answered.
    let out = cluster
        .stack
        .collector()
        .env_remove("TIDEWATCH_CLICKHOUSE_CLUSTER_NODES")
        .args(["maintenance", "retention"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("cluster tidewatch has 2 shards but nodes of only 1 answered")
            && err.contains("--cluster-node URL"),
        "{err}"
    );

    // Retention on the cluster: the fleet's first day of raw flows goes
    // from every shard and replica; the rollups keep it.
    let stack = &cluster.stack;
    let total: u64 = cluster.want.values().map(|t| t.flows).sum();
    let day1 = stack.query_u64(
        "SELECT count() FROM tidewatch.flows WHERE toDate(first_seen) = toDate('2026-01-01')",
    );
    assert!(day1 > 0);
    let keep = fleet::retention_keeping_from(1_767_312_000); // 2026-01-02
    let out = run_ok(stack.collector().args([
        "maintenance",
        "retention",
        "--flow-retention-days",
        &keep,
        "--rollup-retention-days",
        "3650",
    ]));
    assert!(out.contains("retention: 1 partition(s) dropped"), "{out}");
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.flows"),
        total - day1
    );
    for n in 1..=4 {
        stack
            .node_query(n, "SYSTEM SYNC REPLICA tidewatch.flows_raw_local")
            .unwrap();
        let left = stack
            .node_query(
                n,
                "SELECT count() FROM system.parts WHERE database = 'tidewatch' \
                 AND table = 'flows_raw_local' AND active AND partition = '20260101'",
            )
            .unwrap();
        assert_eq!(left.trim(), "0", "node {n} still holds the first day");
    }
    assert_eq!(
        stack.query_u64("SELECT sum(flows) FROM tidewatch.traffic_hourly"),
        total
    );
}
