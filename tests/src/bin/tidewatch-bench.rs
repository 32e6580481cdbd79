//! `tidewatch-bench`: throughput of the collector on this machine.
//!
//! 1. ingest: synthetic batches (zstd-compressed, as the sensor sends them)
//!    are uploaded over several mTLS streams with a window of unacked
//!    batches; measured: acked flows/s (an ack means "in Kafka") and flows per
//!    CPU-second of the ingest processes;
//! 2. sink: started once everything is in Kafka; measured: rows/s until every
//!    row is in ClickHouse, and rows per CPU-second of the sink processes;
//! 3. ClickHouse alone (the ceiling of the sink): the rows the sink stored
//!    (flows and both hourly rollups), read back as RowBinary, inserted
//!    again in chunks of the sink's size into empty copies of their tables
//!    over HTTP, as the sink inserts them but with nothing else to do (no
//!    Kafka, no decoding, no ledger); reported for the flows alone and for
//!    everything the sink writes per flow.
//!
//! Run it with `deploy/local/bench.sh` (release build). Options:
//! `--batches N --flows-per-batch N --streams N --window N`, `--ingests N`
//! (behind one balancer), `--sinks N` (one consumer group), `--cluster` (the
//! local 2 × 2 ClickHouse cluster instead of one server).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidewatch_proto::codec::{self, Layout};
use tidewatch_proto::v1::uplink_client::UplinkClient;
use tidewatch_proto::v1::{AckStatus, Batch, UploadRequest};
use tidewatch_tests::grpc::{channel, ClientCert};
use tidewatch_tests::synth::bench_flow;
use tidewatch_tests::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn arg(name: &str, default: usize) -> usize {
    number_arg(name, default as u64) as usize
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    let batches = arg("--batches", 400);
    let per_batch = arg("--flows-per-batch", 1000);
    let streams = arg("--streams", 2).max(1);
    let window = arg("--window", 16).max(1);
    let total_flows = (batches * per_batch) as u64;
    println!("tidewatch-bench: {batches} batches x {per_batch} flows = {total_flows} flows, {streams} streams, window {window}");

    let cluster = std::env::args().any(|a| a == "--cluster");
    let (n_ingests, n_sinks) = (arg("--ingests", 1).max(1), arg("--sinks", 1).max(1));
    let stack = if cluster {
        Stack::start_cluster()
    } else {
        Stack::start()
    };
    stack.migrate();
    println!(
        "ClickHouse: {}; {n_ingests} ingest(s), {n_sinks} sink(s)",
        if cluster {
            "2 shards x 2 replicas (4 servers) and ZooKeeper"
        } else {
            "one server"
        }
    );
    let pki = Pki::new(stack.path().join("pki"));
    let certs: Vec<SensorCert> = (0..streams)
        .map(|i| pki.sensor(&format!("bench-{i}"), "mv-bench"))
        .collect();
    let ports: Vec<u16> = (0..n_ingests).map(|_| free_port()).collect();
    let ingests: Vec<Proc> = ports.iter().map(|p| stack.ingest(&pki, *p, &[])).collect();
    let balancer = (n_ingests > 1).then(|| linkemu::LinkEmu::balance(&ports));
    let port = balancer.as_ref().map_or(ports[0], |b| b.port);
    let ingest_cpu = || ingests.iter().map(|p| cpu_seconds(p.pid())).sum::<f64>();

    // Pre-encode every request (not part of the measurement).
    let mut per_stream: Vec<Vec<UploadRequest>> = vec![Vec::new(); streams];
    let mut wire_bytes = 0usize;
    for b in 0..batches {
        let seq = (b / streams + 1) as u64;
        let batch = Batch {
            seq,
            sensor_id: String::new(),
            created_us: 0,
            flows: (0..per_batch as u64)
                .map(|i| bench_flow(b as u64 * per_batch as u64 + i))
                .collect(),
            assets: Vec::new(),
            status: Vec::new(),
        };
        let request = codec::encode(&batch, Layout::default(), Some(3));
        wire_bytes += request.payload.len();
        per_stream[b % streams].push(request);
    }
    println!(
        "wire: {:.1} bytes/flow (zstd columns, the sensors' default layout)",
        wire_bytes as f64 / total_flows as f64
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cpu0 = ingest_cpu();
    let t0 = Instant::now();
    let acked: u64 = rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, reqs) in per_stream.into_iter().enumerate() {
            let c = certs[i].clone();
            tasks.push(tokio::spawn(async move {
                upload_windowed(port, &c, reqs, window).await
            }));
        }
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        n
    });
    let ingest_s = t0.elapsed().as_secs_f64();
    let ingest_cpu = ingest_cpu() - cpu0;
    assert_eq!(acked, batches as u64, "not every batch was acked");
    println!(
        "ingest: {total_flows} flows acked in {ingest_s:.2} s = {:.0} flows/s; ingest CPU {ingest_cpu:.2} s = {:.0} flows per CPU-second",
        total_flows as f64 / ingest_s,
        total_flows as f64 / ingest_cpu.max(0.001)
    );

    let mports: Vec<u16> = (0..n_sinks).map(|_| free_port()).collect();
    let sinks: Vec<Proc> = mports
        .iter()
        .enumerate()
        .map(|(i, mport)| {
            let (name, listen) = (format!("sink-{i}"), format!("127.0.0.1:{mport}"));
            stack.sink(
                &name,
                &[
                    "--max-rows",
                    &CHUNK_ROWS.to_string(),
                    "--metrics-listen",
                    &listen,
                    "--kafka-group-instance-id",
                    &name,
                ],
            )
        })
        .collect();
    let sink_cpu = || sinks.iter().map(|p| cpu_seconds(p.pid())).sum::<f64>();
    let cpu0 = sink_cpu();
    let t0 = Instant::now();
    // The clock starts at the first stored row, so the consumer-group join
    // is not counted as insert time.
    let first = wait_until(Duration::from_secs(600), "first rows from the sink", || {
        let n = stack.query_u64("SELECT count() FROM tidewatch.flows_raw");
        (n > 0).then(|| (Instant::now(), n))
    });
    // The end: the ledger row of every batch, which the sink writes after
    // its flows and rollups.
    wait_until(
        Duration::from_secs(1800),
        "sink to store every batch",
        || {
            (stack.query_u64("SELECT count() FROM tidewatch.batches") >= batches as u64)
                .then_some(())
        },
    );
    let sink_s = first.0.elapsed().as_secs_f64();
    let rows = total_flows - first.1;
    let sink_cpu = sink_cpu() - cpu0;
    let sink_rate = rows as f64 / sink_s.max(0.001);
    println!(
        "sink: group join + first chunk {:.2} s; then {rows} rows in {sink_s:.2} s = {sink_rate:.0} rows/s; sink CPU {sink_cpu:.2} s = {:.0} rows per CPU-second (ClickHouse shares the 2 cores)",
        (first.0 - t0).as_secs_f64(),
        total_flows as f64 / sink_cpu.max(0.001)
    );
    // Where the time went: the sinks' ClickHouse inserts (flows, rollups,
    // ledger) against the rest (consuming from Kafka, checking, decoding,
    // aggregating the rollups, committing).
    let m = |name: &str| -> f64 {
        mports
            .iter()
            .map(|p| http::metric(*p, name).unwrap_or(0.0))
            .sum()
    };
    let (ins_s, inserts) = (
        m("tidewatch_sink_clickhouse_insert_seconds_sum"),
        m("tidewatch_sink_clickhouse_insert_seconds_count"),
    );
    let wall = t0.elapsed().as_secs_f64() * n_sinks as f64;
    println!(
        "sink time: {ins_s:.2} s in {inserts:.0} ClickHouse inserts ({:.0} % of the sinks' {wall:.2} s from start), {:.0} batches per chunk; the rest consuming, checking, decoding, aggregating, committing",
        100.0 * ins_s / wall,
        batches as f64 / m("tidewatch_sink_offset_commits_total").max(1.0)
    );
    println!(
        "sink peak RSS: {:.0} MiB (two chunks of up to {CHUNK_ROWS} rows in memory)",
        sinks
            .iter()
            .map(|p| status_kib(p.pid(), "VmHWM:"))
            .max()
            .unwrap_or(0) as f64
            / 1024.0
    );
    let dedup = stack.query_u64("SELECT count() FROM tidewatch.flows");
    assert_eq!(dedup, total_flows, "exactly-once view disagrees");
    println!("check: tidewatch.flows holds {dedup} flows (= sent)");
    drop(sinks);
    drop(ingests);

    let alone = clickhouse_alone(&stack, total_flows);
    for (table, rows, secs) in &alone {
        println!(
            "ClickHouse alone: {table}: {rows} rows in {secs:.2} s = {:.0} rows/s",
            *rows as f64 / secs
        );
    }
    let flows_only = total_flows as f64 / alone[0].2;
    let all: f64 = alone.iter().map(|a| a.2).sum();
    let ceiling = total_flows as f64 / all;
    println!(
        "ceiling: flows alone {flows_only:.0} rows/s; everything the sink writes per flow (flows and both rollups) {ceiling:.0} flows/s ({:.2} rollup rows per flow); the sink reaches {:.0} % of that ceiling ({:.0} % of flows alone)",
        alone[1..].iter().map(|a| a.1).sum::<u64>() as f64 / total_flows as f64,
        100.0 * sink_rate / ceiling,
        100.0 * sink_rate / flows_only
    );
}

/// Rows per sink insert in this benchmark.
const CHUNK_ROWS: u64 = 200_000;

/// The tables the sink writes per flow, with their sorting keys (the order
/// the sink inserts their rows in).
const SINK_TABLES: [(&str, &str); 3] = [
    ("flows_raw", "sensor_id, batch_seq, record_idx"),
    (
        "traffic_hourly_raw",
        "vessel, hour, server_ip, server_port, transport, app_protocol, sensor_id, batch_seq",
    ),
    (
        "dest_hourly_raw",
        "vessel, hour, server_ip, sensor_id, batch_seq",
    ),
];

/// The insert ceiling: the rows the sink stored in each of [`SINK_TABLES`]
/// read back as RowBinary, then inserted into an empty copy of the table
/// (of every shard on a cluster, through a Distributed copy) in as many
/// inserts as the flows take at `CHUNK_ROWS` each; per table, its rows and
/// the seconds its inserts took.
fn clickhouse_alone(stack: &Stack, total: u64) -> Vec<(&'static str, u64, f64)> {
    let show = |n: Option<usize>, table: &str| -> String {
        let sql = format!("SHOW CREATE TABLE tidewatch.{table} FORMAT TSVRaw");
        match n {
            Some(n) => stack.node_query(n, &sql),
            None => stack.query(&sql),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    let inserts = total.div_ceil(CHUNK_ROWS);
    let mut out = Vec::new();
    for (table, key) in SINK_TABLES {
        let copy = format!("ceiling_{table}");
        match &stack.cluster {
            None => {
                let ddl = show(None, table).replace(
                    &format!("tidewatch.{table} "),
                    &format!("tidewatch.{copy} "),
                );
                stack.query(&ddl).unwrap();
            }
            Some(c) => {
                for n in 1..=c.http_ports.len() {
                    let ddl = show(Some(n), &format!("{table}_local"))
                        .replace(
                            &format!("tidewatch.{table}_local "),
                            &format!("tidewatch.{copy}_local "),
                        )
                        .replace(
                            &format!("tidewatch.{table}'"),
                            &format!("tidewatch.{copy}'"),
                        );
                    stack.node_query(n, &ddl).unwrap();
                }
                let ddl = show(Some(1), table)
                    .replace(
                        &format!("tidewatch.{table} "),
                        &format!("tidewatch.{copy} "),
                    )
                    .replace(&format!("{table}_local"), &format!("{copy}_local"));
                stack.node_query(1, &ddl).unwrap();
            }
        }
        let rows = stack.query_u64(&format!("SELECT count() FROM tidewatch.{table}"));
        let per_insert = rows.div_ceil(inserts).max(1);
        let mut chunks = Vec::new();
        for k in 0..rows.div_ceil(per_insert) {
            let sql = format!(
                "SELECT * FROM tidewatch.{table} ORDER BY {key} \
                 LIMIT {per_insert} OFFSET {} FORMAT RowBinary",
                k * per_insert
            );
            chunks.push(http::http_post_bytes(stack.ch_http_port, "/", sql.as_bytes()).unwrap());
        }
        let path = format!(
            "/?query=INSERT%20INTO%20tidewatch.{copy}%20FORMAT%20RowBinary&insert_distributed_sync=1"
        );
        let t0 = Instant::now();
        for c in &chunks {
            http::http_post_bytes(stack.ch_http_port, &path, c).unwrap();
        }
        let secs = t0.elapsed().as_secs_f64();
        // Compared as the views see them: a copy's merges may already have
        // collapsed rows that two sinks stored twice during a rebalance.
        let distinct =
            |t: &str| stack.query_u64(&format!("SELECT count() FROM tidewatch.{t} FINAL"));
        assert_eq!(
            distinct(&copy),
            distinct(table),
            "the copy of {table} lost rows"
        );
        out.push((table, rows, secs));
    }
    out
}

/// Streams `reqs` keeping at most `window` unacked; returns batches acked.
async fn upload_windowed(
    port: u16,
    c: &SensorCert,
    reqs: Vec<UploadRequest>,
    window: usize,
) -> u64 {
    let client = ClientCert::of(c);
    let ch = channel(port, &c.ca, Some(client)).await.expect("connect");
    let mut client = UplinkClient::new(ch).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<UploadRequest>(window);
    let reqs = Arc::new(reqs);
    let n = reqs.len();
    let mut next = 0;
    while next < n.min(window) {
        tx.send(reqs[next].clone()).await.unwrap();
        next += 1;
    }
    let mut acks = client
        .upload(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut acked = 0u64;
    while (acked as usize) < n {
        let a = acks
            .message()
            .await
            .expect("ack")
            .expect("stream ended early");
        assert_eq!(a.status, AckStatus::Accepted as i32, "{a:?}");
        acked += 1;
        if next < n {
            tx.send(reqs[next].clone()).await.unwrap();
            next += 1;
        }
    }
    acked
}
