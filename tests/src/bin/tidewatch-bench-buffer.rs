//! `tidewatch-bench-buffer`: the sensor's disk buffer on this machine.
//!
//! 1. append: realistic batches (2000 synthetic flows each, zstd, as `run`
//!    seals them) until the backlog reaches `--mib` (default 1024 MiB), with
//!    the default fsync policy (interval, 1 s); then 2000 batches with
//!    `--fsync every-batch`;
//! 2. open: a restart scans and validates every segment (CRC per record);
//! 3. drain: the upload path without the network (a reader per class,
//!    oldest first, and an ack per batch so acked segments are reclaimed),
//!    sampling the process's RSS: memory must not grow with the backlog.
//!
//! Run it with `deploy/local/bench-buffer.sh` (release build).
//! Options: `--mib N`, `--dir PATH` (default: a directory under target/).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tidewatch_proto::codec::Layout;
use tidewatch_proto::v1::{Batch, UploadRequest};
use tidewatch_sensor::batch::{PreparedBatch, Priority};
use tidewatch_sensor::buffer::{BufferConfig, ClassedBuffer, Fsync, WhenFull};
use tidewatch_tests::status_kib;
use tidewatch_tests::synth::bench_flow;

const FLOWS: u64 = 2000;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn rss_mib() -> f64 {
    status_kib(std::process::id(), "VmRSS:") as f64 / 1024.0
}

fn config(dir: &std::path::Path, max: u64, fsync: Fsync) -> BufferConfig {
    BufferConfig {
        dir: dir.to_path_buf(),
        max_bytes: max,
        fsync,
        when_full: WhenFull::DropOldest,
    }
}

fn main() {
    let mib: u64 = arg("--mib").map_or(1024, |v| v.parse().expect("--mib takes a number"));
    let root = arg("--dir").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-buffer"),
        PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("bench directory");
    let target = mib * 1024 * 1024;

    // 32 distinct batches, encoded once (encoding is not what is measured).
    let payloads: Vec<Vec<u8>> = (0..32u64)
        .map(|b| {
            let batch = Batch {
                seq: b + 1,
                sensor_id: String::new(),
                created_us: 1_700_000_000_000_000,
                flows: (0..FLOWS).map(|i| bench_flow(b * FLOWS + i)).collect(),
                assets: Vec::new(),
                status: Vec::new(),
            };
            tidewatch_proto::codec::encode(&batch, Layout::default(), Some(3)).payload
        })
        .collect();
    let avg = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();
    let batch = |seq: u64| PreparedBatch {
        seq,
        flows: FLOWS as usize,
        class: Priority::Bulk,
        request: UploadRequest {
            seq,
            encoding: Layout::default().encoding(true) as i32,
            payload: payloads[(seq % 32) as usize].clone(),
        },
        sent: false,
    };
    println!(
        "tidewatch-bench-buffer: {mib} MiB backlog of {FLOWS}-flow batches ({avg} bytes each, {:.1} bytes/flow) in {}",
        avg as f64 / FLOWS as f64,
        root.display()
    );

    // 1. Append with the default fsync policy.
    let dir = root.join("buffer");
    let cap = target + target / 4;
    let (mut buf, _) =
        ClassedBuffer::open(config(&dir, cap, Fsync::Interval(Duration::from_secs(1)))).unwrap();
    let t0 = Instant::now();
    let mut seq = 0;
    while buf.stats().bytes < target {
        seq += 1;
        assert!(buf.append(&batch(seq)).unwrap());
    }
    buf.sync().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let bytes = buf.stats().bytes;
    println!(
        "append (fsync interval 1 s): {seq} batches, {} flows, {:.0} MiB in {secs:.2} s = {:.0} batches/s, {:.2} M flows/s, {:.0} MiB/s",
        seq * FLOWS,
        bytes as f64 / 1048576.0,
        seq as f64 / secs,
        (seq * FLOWS) as f64 / secs / 1e6,
        bytes as f64 / 1048576.0 / secs
    );
    drop(buf);

    // 2. Restart: open scans and validates everything.
    let t0 = Instant::now();
    let (buf, report) =
        ClassedBuffer::open(config(&dir, cap, Fsync::Interval(Duration::from_secs(1)))).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(report.pending_batches, seq);
    println!(
        "open after restart: {} segments, {} batches validated in {secs:.2} s ({:.0} MiB/s); RSS {:.1} MiB",
        report.segments,
        report.pending_batches,
        bytes as f64 / 1048576.0 / secs,
        rss_mib()
    );

    // 3. Drain as the uplink would, acking every batch.
    let before = rss_mib();
    let mut peak = before;
    let mut buf = buf;
    let mut reader = buf.reader(Priority::Bulk);
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut flows = 0u64;
    while let Some(s) = reader.next_batch().unwrap() {
        n += 1;
        flows += s.flows as u64;
        buf.ack(Priority::Bulk, s.seq).unwrap();
        if n.is_multiple_of(500) {
            peak = peak.max(rss_mib());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    peak = peak.max(rss_mib());
    assert_eq!(n, seq, "every batch read back");
    println!(
        "drain (read + ack + reclaim): {n} batches, {flows} flows in {secs:.2} s = {:.0} batches/s, {:.2} M flows/s, {:.0} MiB/s; RSS {before:.1} MiB before, peak {peak:.1} MiB while draining {:.0} MiB; {} bytes left on disk",
        n as f64 / secs,
        flows as f64 / secs / 1e6,
        bytes as f64 / 1048576.0 / secs,
        bytes as f64 / 1048576.0,
        buf.stats().bytes
    );
    drop(buf);

    // 4. Append with an fsync per batch (the safest policy).
    let dir = root.join("every-batch");
    let (mut buf, _) = ClassedBuffer::open(config(&dir, 1 << 30, Fsync::EveryBatch)).unwrap();
    let t0 = Instant::now();
    for s in 1..=2000 {
        assert!(buf.append(&batch(s)).unwrap());
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "append (fsync every batch): 2000 batches in {secs:.2} s = {:.0} batches/s, {:.2} M flows/s",
        2000.0 / secs,
        2000.0 * FLOWS as f64 / secs / 1e6
    );
    drop(buf);
    let _ = std::fs::remove_dir_all(&root);
}
