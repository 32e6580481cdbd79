//! `tidewatch-bench-streams`: ingest with many concurrent sensor streams.
//!
//! Simulated sensors (a few hundred certificates, each opening several
//! upload streams over mTLS) open every stream first; measured: ingest's
//! resident memory with all of them open and idle. Then every stream uploads
//! its batches and waits for the acks; measured: acked flows/s and ingest's
//! peak resident memory, against the goal of under 1 GiB for 10,000 streams.
//!
//! Run it with `deploy/local/bench-streams.sh` (release build). Options:
//! `--streams N --certs N --streams-per-connection N --batches-per-stream N
//! --flows-per-batch N`.

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
    number_arg(name, default as u64).max(1) as usize
}

/// A line of /proc/PID/status, in KiB.
fn main() {
    let streams = arg("--streams", 10_000);
    let certs = arg("--certs", 200).min(streams);
    let per_conn = arg("--streams-per-connection", 50);
    let batches = arg("--batches-per-stream", 2);
    let per_batch = arg("--flows-per-batch", 50);
    let per_cert = streams.div_ceil(certs);
    let conns_per_cert = per_cert.div_ceil(per_conn);
    let total_flows = (streams * batches * per_batch) as u64;
    println!(
        "tidewatch-bench-streams: {streams} streams from {certs} certificates \
         ({per_cert} each over {conns_per_cert} connection(s)), {batches} batch(es) of {per_batch} flows per stream"
    );

    let stack = Stack::start();
    stack.migrate();
    let pki = Pki::new(stack.path().join("pki"));
    let t = Instant::now();
    let certs: Vec<SensorCert> = (0..certs)
        .map(|i| pki.sensor(&format!("sim-{i}"), "mv-bench"))
        .collect();
    println!(
        "issued {} certificates in {:.1} s",
        certs.len(),
        t.elapsed().as_secs_f64()
    );
    let port = free_port();
    let ingest = stack.ingest(
        &pki,
        port,
        &[
            "--max-streams-per-sensor",
            &per_cert.to_string(),
            "--max-connections-per-sensor",
            &conns_per_cert.to_string(),
            "--max-streams-per-connection",
            &per_conn.to_string(),
            "--max-handshakes",
            "1024",
        ],
    );
    let pid = ingest.pid();
    let idle_kib = status_kib(pid, "VmRSS:");

    // Pre-encode one batch per (stream, batch) (not part of the measurement).
    let payload = |seq: u64, base: u64| -> UploadRequest {
        let batch = Batch {
            seq,
            flows: (0..per_batch as u64)
                .map(|i| bench_flow(base + i))
                .collect(),
            ..Batch::default()
        };
        codec::encode(&batch, Layout::default(), Some(3))
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (open_kib, acked, upload_s, peak_kib) = rt.block_on(async {
        // 1. Every stream opened and held, idle.
        let mut senders = Vec::with_capacity(streams);
        let mut acks = Vec::with_capacity(streams);
        let mut channels = Vec::new();
        let mut s = 0;
        'certs: for (c, cert) in certs.iter().enumerate() {
            for _ in 0..conns_per_cert {
                let cc = ClientCert::of(cert);
                let ch = channel(port, &pki.dir.join("ca.pem"), Some(cc))
                    .await
                    .unwrap_or_else(|e| panic!("certificate {c}: {e}"));
                channels.push(ch.clone());
                for _ in 0..per_conn {
                    if s == streams || s >= (c + 1) * per_cert {
                        continue 'certs;
                    }
                    let (tx, rx) = mpsc::channel::<UploadRequest>(batches);
                    let mut client = UplinkClient::new(ch.clone());
                    let resp = client
                        .upload(ReceiverStream::new(rx))
                        .await
                        .unwrap_or_else(|e| panic!("stream {s}: {e}"));
                    senders.push(tx);
                    acks.push(resp.into_inner());
                    s += 1;
                }
            }
        }
        assert_eq!(senders.len(), streams, "not every stream opened");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let open_kib = status_kib(pid, "VmRSS:");

        // 2. Every stream uploads its batches and waits for the acks.
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(streams);
        for (i, (tx, mut inbound)) in senders.into_iter().zip(acks).enumerate() {
            let reqs: Vec<UploadRequest> = (0..batches)
                .map(|b| payload(b as u64 + 1, ((i * batches + b) * per_batch) as u64))
                .collect();
            tasks.push(tokio::spawn(async move {
                for r in reqs {
                    tx.send(r).await.expect("stream open");
                }
                let mut ok = 0u64;
                for _ in 0..batches {
                    match inbound.message().await {
                        Ok(Some(a)) if a.status == AckStatus::Accepted as i32 => ok += 1,
                        other => panic!("stream {i}: {other:?}"),
                    }
                }
                drop(tx);
                ok
            }));
        }
        let mut acked = 0;
        for t in tasks {
            acked += t.await.unwrap();
        }
        let upload_s = t0.elapsed().as_secs_f64();
        let peak_kib = status_kib(pid, "VmHWM:");
        drop(channels);
        (open_kib, acked, upload_s, peak_kib)
    });
    assert_eq!(
        acked,
        (streams * batches) as u64,
        "not every batch was acked"
    );
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "ingest RSS: {:.0} MiB idle, {:.0} MiB with {streams} streams open ({:.1} KiB per stream)",
        mib(idle_kib),
        mib(open_kib),
        open_kib.saturating_sub(idle_kib) as f64 / streams as f64
    );
    println!(
        "uploads: {acked} batches, {total_flows} flows acked in {upload_s:.2} s = {:.0} flows/s; ingest peak RSS {:.0} MiB (goal: under 1024 MiB)",
        total_flows as f64 / upload_s,
        mib(peak_kib)
    );
}
