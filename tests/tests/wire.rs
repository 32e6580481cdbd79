//! The batch layouts on the wire, end to end: a sensor sealing protobuf
//! batches (the original layout, as sensors not yet upgraded do), one
//! sealing columns, and one whose columns are linked to its upload stream's
//! table deliver the same captures through ingest, Kafka and the sink, and
//! ClickHouse holds the same rows for all of them, row by row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tidewatch_proto::codec::{self, Layout};
use tidewatch_proto::link::LinkEncoder;
use tidewatch_proto::v1::{AckStatus, Encoding, UploadRequest};
use tidewatch_sensor::assets::{AssetTable, Oui};
use tidewatch_sensor::batch::{BatchConfig, Batcher, Group, Sealer, SeqStore};
use tidewatch_sensor::flow::{FlowConfig, FlowTable};
use tidewatch_sensor::pipeline::{meter_file, Progress};
use tidewatch_tests::*;

/// Every capture of the reference corpus.
fn corpus() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in std::fs::read_dir(pcaps()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let name = f.to_string_lossy();
            if name.ends_with(".pcap") || name.ends_with(".pcapng") {
                v.push(f);
            }
        }
    }
    v.sort();
    assert!(v.len() >= 30, "corpus: {v:?}");
    v
}

/// A capture of realistic shape from the project's generator.
fn generated(dir: &Path, packets: u32) -> PathBuf {
    let out = dir.join("realistic.pcap");
    run_ok(
        Command::new("python3")
            .arg(root().join("deploy/local/gen-traffic.py"))
            .arg(&out)
            .args(["--packets", &packets.to_string(), "--seed", "7"]),
    );
    out
}

/// 2000-01-01 in microseconds: the sink dead-letters flows from before it
/// (one capture of the corpus has a clock at 1970).
const EARLIEST_STORED_US: i64 = 946_684_800_000_000;

/// The upload requests a sensor sealing in `layout` makes of `captures`
/// (small batches, so that every capture spans several), and the flows
/// in them that the sink stores.
fn sealed(captures: &[PathBuf], layout: Layout, state: &Path) -> (Vec<UploadRequest>, u64) {
    let cfg = BatchConfig {
        max_flows: 40,
        layout,
        ..BatchConfig::default()
    };
    let mut sealer = Sealer::new(cfg.clone(), SeqStore::open(state).unwrap());
    let mut reqs = Vec::new();
    let mut flows = 0;
    for f in captures {
        let mut table =
            FlowTable::new(FlowConfig::default()).with_assets(AssetTable::new(Oui::default()));
        let mut batcher = Batcher::new(cfg.clone());
        let mut seal = |groups: Vec<Group>| {
            for g in groups {
                reqs.extend(sealer.seal(g).unwrap().into_iter().map(|b| b.request));
            }
        };
        let stop = AtomicBool::new(false);
        meter_file(
            f,
            &mut table,
            None,
            &stop,
            &Progress::default(),
            |recs, assets| {
                flows += recs
                    .iter()
                    .filter(|r| r.first_seen_us.min(r.last_seen_us) >= EARLIEST_STORED_US)
                    .count() as u64;
                seal(batcher.push(recs, assets));
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        seal(batcher.flush(None));
    }
    (reqs, flows)
}

/// Every stored flow of `sensor` (all columns but the sensor, the batch
/// seq and the arrival time), in batch and record order.
fn rows(stack: &Stack, sensor: &str) -> Vec<String> {
    let out = stack
        .query(&format!(
            "SELECT record_idx, first_seen_us, last_seen_us, client_ip, server_ip, client_port, \
             server_port, ip_protocol, transport, app_protocol, vlan, c2s_packets, c2s_bytes, \
             c2s_payload_bytes, c2s_tcp_flags, s2c_packets, s2c_bytes, s2c_payload_bytes, \
             s2c_tcp_flags, end_reason, op_codes, op_names, op_classes, op_counts, op_errors, \
             indicators FROM tidewatch.flows_raw WHERE sensor_id = '{sensor}' \
             ORDER BY batch_seq, record_idx"
        ))
        .unwrap();
    out.lines().map(str::to_string).collect()
}

/// The hourly rollup rows of `sensor` (all but the sensor and batch).
fn rollups(stack: &Stack, sensor: &str) -> String {
    stack
        .query(&format!(
            "SELECT hour, server_ip, server_port, transport, app_protocol, sum(flows), \
             sum(packets), sum(c2s_bytes), sum(s2c_bytes) FROM tidewatch.traffic_hourly_raw \
             WHERE sensor_id = '{sensor}' GROUP BY hour, server_ip, server_port, transport, \
             app_protocol ORDER BY hour, server_ip, server_port, transport, app_protocol"
        ))
        .unwrap()
}

fn assert_same_rows(stack: &Stack, old: &str, new: &str, flows: u64) {
    let want: BTreeMap<String, u64> = [(old.to_string(), flows), (new.to_string(), flows)].into();
    wait_until(
        Duration::from_secs(120),
        "both sensors' flows stored",
        || {
            let got: BTreeMap<String, u64> = ch_totals(stack, "flows_raw")
                .into_iter()
                .filter(|(s, _)| s == old || s == new)
                .map(|(s, t)| (s, t.flows))
                .collect();
            (got == want).then_some(())
        },
    );
    let (a, b) = (rows(stack, old), rows(stack, new));
    assert_eq!(a.len() as u64, flows);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "row {i} differs between {old} and {new}");
    }
    // The rollups are inserted after the flows of the same chunk: once
    // both count every flow, they must be the same.
    let rolled = |s: &str| {
        stack.query_u64(&format!(
            "SELECT sum(flows) FROM tidewatch.traffic_hourly_raw WHERE sensor_id = '{s}'"
        ))
    };
    wait_until(Duration::from_secs(60), "every flow in the rollups", || {
        (rolled(old) == flows && rolled(new) == flows).then_some(())
    });
    assert_eq!(
        rollups(stack, old),
        rollups(stack, new),
        "rollups differ between {old} and {new}"
    );
}

/// Batches ingest acked in `encoding` (its metrics label).
fn acked(mport: u16, encoding: &str) -> f64 {
    metric(
        mport,
        &format!("tidewatch_ingest_batches_acked_by_encoding_total{{encoding=\"{encoding}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn protobuf_columnar_and_linked_batches_store_the_same_rows_and_an_old_format_sensor_still_delivers(
) {
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let shore = Shore::builder()
        .ingest(&["--metrics-listen", &listen])
        .sink(&[])
        .start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let realistic = generated(stack.path(), 60_000);

    // The whole reference corpus and the generator, sealed both ways and
    // uploaded as two sensors of one vessel.
    let mut captures = corpus();
    captures.push(realistic.clone());
    let mut flows = 0;
    for (id, layout) in [
        ("corpus-protobuf", Layout::Protobuf),
        ("corpus-columns", Layout::Columns),
    ] {
        let cert = pki.sensor(id, "mv-layouts");
        let (reqs, n) = sealed(&captures, layout, &stack.path().join(id));
        assert!(n > 3_000, "{n} flows");
        flows = n;
        let want = layout.encoding(true) as i32;
        assert!(reqs.iter().all(|r| r.encoding == want));
        let count = reqs.len();
        let client = Some(grpc::ClientCert {
            cert: &cert.cert,
            key: &cert.key,
        });
        let acks = grpc::upload(port, &cert.ca, client, reqs).unwrap();
        assert_eq!(acks.len(), count);
        assert!(
            acks.iter().all(|a| a.status == AckStatus::Accepted as i32),
            "{id}: {:?}",
            acks.iter().find(|a| a.status != AckStatus::Accepted as i32)
        );
    }
    assert_same_rows(stack, "corpus-protobuf", "corpus-columns", flows);
    // The columnar batches again, each linked to the stream's table as the
    // sensor links them: a third sensor, the same rows.
    let cert = pki.sensor("corpus-linked", "mv-layouts");
    let (reqs, _) = sealed(
        &captures,
        Layout::Columns,
        &stack.path().join("corpus-linked"),
    );
    let count = reqs.len();
    let client = Some(grpc::ClientCert::of(&cert));
    let (acks, linked) = grpc::upload_linked(port, &cert.ca, client, reqs).unwrap();
    assert_eq!((acks.len(), linked), (count, count));
    assert!(
        acks.iter().all(|a| a.status == AckStatus::Accepted as i32),
        "{:?}",
        acks.iter().find(|a| a.status != AckStatus::Accepted as i32)
    );
    assert_same_rows(stack, "corpus-protobuf", "corpus-linked", flows);
    println!("corpus and generated capture: {flows} flows, the same rows all three ways");

    // A linked batch referring to entries its stream never kept is
    // refused for what it is, and the stream goes on.
    let cert = pki.sensor("linked-forger", "mv-layouts");
    let mut forger = LinkEncoder::new(1 << 20);
    let (mut reqs, _) = sealed(
        &captures[..3],
        Layout::Columns,
        &stack.path().join("forger"),
    );
    reqs.sort_by_key(|r| std::cmp::Reverse(r.payload.len()));
    let first = codec::encode_linked(&reqs[0], &mut forger).unwrap();
    forger.accepted(&first.1); // as if an ack had come: it did not
    let again = codec::encode_linked(&reqs[0], &mut forger).unwrap();
    forger.accepted(&again.1);
    assert!(!forger.table().is_empty());
    let forged = codec::encode_linked(&reqs[0], &mut forger).unwrap().0;
    assert_eq!(forged.encoding, Encoding::ColumnsLinkedZstd as i32);
    let client = Some(grpc::ClientCert {
        cert: &cert.cert,
        key: &cert.key,
    });
    let acks = grpc::upload(port, &cert.ca, client, vec![forged, reqs[1].clone()]).unwrap();
    assert_eq!(acks[0].status, AckStatus::Malformed as i32, "{:?}", acks[0]);
    assert!(acks[0].detail.contains("link table"), "{}", acks[0].detail);
    assert_eq!(acks[1].status, AckStatus::Accepted as i32, "{:?}", acks[1]);

    // The sensor binary on the generated capture: the old layout; columns
    // linked to the stream's table (this ingest offers one); columns
    // self-contained, to an ingest that offers none.
    let plain_port = free_port();
    let plain_mport = free_port();
    let plain_listen = format!("127.0.0.1:{plain_mport}");
    let _plain_ingest = stack.ingest(
        pki,
        plain_port,
        &["--link-table-bytes", "0", "--metrics-listen", &plain_listen],
    );
    let expected = read_flows(&realistic).len() as u64;
    for (id, layout, port) in [
        ("run-protobuf", "protobuf", port),
        ("run-linked", "columns", port),
        ("run-columns", "columns", plain_port),
    ] {
        let cert = pki.sensor(id, "mv-layouts");
        let mut s = SensorRun::new(&cert, port, &realistic, &stack.path().join(id))
            .args(&["--batch-layout", layout, "--batch-flows", "500"])
            .spawn(id, stack.path());
        let st = s.wait(Duration::from_secs(120));
        assert!(st.success(), "{id} failed:\n{}", s.log_text());
        assert!(s.log_text().contains("upload complete"));
    }
    let linked = acked(mport, "columns_linked_zstd");
    assert!(linked >= 10.0, "linked batches acked: {linked}");
    assert_eq!(acked(plain_mport, "columns_linked_zstd"), 0.0);
    assert!(acked(plain_mport, "columns_zstd") >= 10.0);
    // The linked sensor sent fewer bytes for the same flows.
    let sent = |id: &str| {
        let text = std::fs::read_to_string(stack.path().join(format!("{id}.log"))).unwrap();
        text.lines().rev().find_map(|l| {
            let v = l.split("bytes_sent=").nth(1)?;
            v.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
    };
    let (linked_bytes, plain_bytes) = (sent("run-linked").unwrap(), sent("run-columns").unwrap());
    println!("generated capture: {expected} flows; bytes sent linked {linked_bytes}, self-contained {plain_bytes}");
    assert!(linked_bytes < plain_bytes);
    assert_same_rows(stack, "run-protobuf", "run-columns", expected);
    assert_same_rows(stack, "run-protobuf", "run-linked", expected);
}

/// Bulk batches (sealed) of `sensor` in ClickHouse.
fn batches(stack: &Stack, sensor: &str) -> u64 {
    stack.query_u64(&format!(
        "SELECT uniqExact(batch_seq) FROM tidewatch.flows_raw WHERE sensor_id = '{sensor}'"
    ))
}

#[test]
fn while_the_link_is_down_bulk_batches_grow_until_they_are_old_enough() {
    // Two sensors replay 12 s of traffic (100 flows a second) in real
    // time, sealing every 0.5 s (flows come out of the flow table about
    // once a second); one has the shore, the other none until its capture
    // is metered.
    let shore = Shore::start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let start_s = (tidewatch_proto::util::now_us() / 1_000_000) as u32 - 3600;
    let pcap = paced_capture(&stack.path().join("paced.pcap"), 12, start_s);
    let away = free_port();
    let args = [
        "--idle-timeout",
        "0.5",
        "--replay-speed",
        "1",
        "--batch-flows",
        "5000",
        "--flush-interval",
        "0.5",
        "--max-batch-age",
        "5",
    ];
    let mut up = SensorRun::new(
        &pki.sensor("up", "mv-a"),
        shore.port,
        &pcap,
        &stack.path().join("up"),
    )
    .args(&args)
    .spawn("up", stack.path());
    let mut down = SensorRun::new(
        &pki.sensor("down", "mv-b"),
        away,
        &pcap,
        &stack.path().join("down"),
    )
    .args(&args)
    .spawn("down", stack.path());
    down.wait_log("capture metered", Duration::from_secs(60));
    let _ingest = stack.ingest(pki, away, &[]);
    for (id, s) in [("up", &mut up), ("down", &mut down)] {
        let st = s.wait(Duration::from_secs(60));
        assert!(st.success(), "{id}:\n{}", s.log_text());
    }
    let flows = read_flows(&pcap).len() as u64;
    assert_eq!(flows, 1200);
    wait_until(Duration::from_secs(60), "both sensors' flows", || {
        let t = ch_totals(stack, "flows_raw");
        (t.get("up").map(|t| t.flows) == Some(flows)
            && t.get("down").map(|t| t.flows) == Some(flows))
        .then_some(())
    });
    // With the link up, about a batch a second; with the link down, one
    // when the backlog starts, then one every 5 s, and the last one.
    let (many, few) = (batches(stack, "up"), batches(stack, "down"));
    assert!(many >= 9, "link up: {many} batches");
    assert!(few <= 5, "link down: {few} batches");
    println!("12 s of traffic: {many} batches with the link up, {few} with it down");
}
