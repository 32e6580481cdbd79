//! `tidewatch-bench`: throughput of the collector on this machine.
//!
//! 1. ingest: synthetic batches (zstd-compressed, as the sensor sends them)
//!    are uploaded over several mTLS streams with a window of unacked
//!    batches; measured: acked flows/s (an ack means "in Kafka") and flows per
//!    CPU-second of the ingest process;
//! 2. sink: started once everything is in Kafka; measured: rows/s until every
//!    row is in ClickHouse, and rows per CPU-second of the sink process.
//!
//! Run it with `deploy/local/bench.sh` (release build). Options:
//! `--batches N --flows-per-batch N --streams N --window N`, and
//! `--no-rollups` (the rollup views dropped: the raw-insert ceiling).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidewatch_proto::v1::uplink_client::UplinkClient;
use tidewatch_proto::v1::{AckStatus, Batch, Encoding, UploadRequest};
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

fn pid_of(p: &Proc) -> u32 {
    p.pid()
}

fn main() {
    let batches = arg("--batches", 400);
    let per_batch = arg("--flows-per-batch", 1000);
    let streams = arg("--streams", 2).max(1);
    let window = arg("--window", 16).max(1);
    let total_flows = (batches * per_batch) as u64;
    println!("tidewatch-bench: {batches} batches x {per_batch} flows = {total_flows} flows, {streams} streams, window {window}");

    let stack = Stack::start();
    stack.migrate();
    if std::env::args().any(|a| a == "--no-rollups") {
        // The raw-insert ceiling: the rollup views dropped, so an insert
        // of flows does only its own work.
        let views = stack
            .query("SELECT name FROM system.tables WHERE database = 'tidewatch' AND engine = 'MaterializedView'")
            .unwrap();
        for v in views.lines() {
            stack.query(&format!("DROP TABLE tidewatch.`{v}`")).unwrap();
        }
        println!(
            "rollup views dropped: {}",
            views.lines().collect::<Vec<_>>().join(", ")
        );
    }
    let pki = Pki::new(stack.path().join("pki"));
    let certs: Vec<SensorCert> = (0..streams)
        .map(|i| pki.sensor(&format!("bench-{i}"), "mv-bench"))
        .collect();
    let port = free_port();
    let ingest = stack.ingest(&pki, port, &[]);

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
        let payload = tidewatch_proto::codec::encode(&batch, Some(3)).payload;
        wire_bytes += payload.len();
        per_stream[b % streams].push(UploadRequest {
            seq,
            encoding: Encoding::ProtobufZstd as i32,
            payload,
        });
    }
    println!(
        "wire: {:.1} bytes/flow (zstd protobuf)",
        wire_bytes as f64 / total_flows as f64
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cpu0 = cpu_seconds(pid_of(&ingest));
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
    let ingest_cpu = cpu_seconds(pid_of(&ingest)) - cpu0;
    assert_eq!(acked, batches as u64, "not every batch was acked");
    println!(
        "ingest: {total_flows} flows acked in {ingest_s:.2} s = {:.0} flows/s; ingest CPU {ingest_cpu:.2} s = {:.0} flows per CPU-second",
        total_flows as f64 / ingest_s,
        total_flows as f64 / ingest_cpu.max(0.001)
    );

    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let sink = stack.sink(
        "sink",
        &["--max-rows", "200000", "--metrics-listen", &listen],
    );
    let cpu0 = cpu_seconds(pid_of(&sink));
    let t0 = Instant::now();
    // The clock starts at the first stored row, so the consumer-group join
    // is not counted as insert time.
    let first = wait_until(Duration::from_secs(600), "first rows from the sink", || {
        let n = stack.query_u64("SELECT count() FROM tidewatch.flows_raw");
        (n > 0).then(|| (Instant::now(), n))
    });
    wait_until(Duration::from_secs(1800), "sink to store every row", || {
        (stack.query_u64("SELECT count() FROM tidewatch.flows_raw") >= total_flows).then_some(())
    });
    let sink_s = first.0.elapsed().as_secs_f64();
    let rows = total_flows - first.1;
    let sink_cpu = cpu_seconds(pid_of(&sink)) - cpu0;
    println!(
        "sink: group join + first chunk {:.2} s; then {rows} rows in {sink_s:.2} s = {:.0} rows/s; sink CPU {sink_cpu:.2} s = {:.0} rows per CPU-second (ClickHouse 18.16 shares the 2 cores)",
        (first.0 - t0).as_secs_f64(),
        rows as f64 / sink_s.max(0.001),
        total_flows as f64 / sink_cpu.max(0.001)
    );
    // Where the time went: the sink's ClickHouse inserts (rows, then the
    // ledger; the rollup views run inside them) against the rest
    // (consuming from Kafka, checking, decoding, committing).
    let m = |name: &str| http::metric(mport, name).unwrap_or(0.0);
    let (ins_s, inserts) = (
        m("tidewatch_sink_clickhouse_insert_seconds_sum"),
        m("tidewatch_sink_clickhouse_insert_seconds_count"),
    );
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "sink time: {ins_s:.2} s in {inserts:.0} ClickHouse inserts ({:.0} % of the {wall:.2} s from start), {:.0} batches per chunk; the rest consuming, checking, decoding, committing",
        100.0 * ins_s / wall,
        batches as f64 / m("tidewatch_sink_offset_commits_total").max(1.0)
    );
    let dedup = stack.query_u64("SELECT count() FROM tidewatch.flows");
    assert_eq!(dedup, total_flows, "exactly-once view disagrees");
    println!("check: tidewatch.flows holds {dedup} flows (= sent)");
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
