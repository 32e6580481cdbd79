//! Hostile input against the real pipeline (sensor, ingest, broker, sink,
//! ClickHouse 18.16): what a host on the watched network can send must end
//! with every flow stored exactly once, or its loss counted and reported
//! ashore, and every process still serving.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use prost::Message;
use tidewatch_proto::v1::{AckStatus, Batch, Encoding, FlowRecord, Operation, UploadRequest};
use tidewatch_tests::grpc::{flow_totals, request, request_with, upload, ClientCert};
use tidewatch_tests::pcapgen::write_dns_flood_then_modbus;
use tidewatch_tests::{
    bin, deliver_buffered, expect_flows, free_port, http_get, read_flows, run_ok, totals,
    SensorRun, Shore, Totals,
};

/// Ingest with its metrics on a free port: (shore, metrics port).
fn shore_with_ingest_metrics(extra: &[&str]) -> (Shore, u16) {
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let mut args = vec!["--metrics-listen", listen.as_str()];
    args.extend_from_slice(extra);
    (Shore::builder().ingest(&args).sink(&[]).start(), mport)
}

/// Ingest's `tidewatch_ingest_refused_total` by reason (reasons with 0 left out).
fn refused(mport: u16) -> BTreeMap<String, f64> {
    let text = http_get(mport, "/metrics").expect("ingest metrics");
    text.lines()
        .filter_map(|l| l.strip_prefix("tidewatch_ingest_refused_total{reason=\""))
        .filter_map(|l| {
            let (reason, rest) = l.split_once('"')?;
            let v: f64 = rest.rsplit_once(' ')?.1.parse().ok()?;
            (v > 0.0).then(|| (reason.to_string(), v))
        })
        .collect()
}

/// `tidewatch-sensor buffer set-aside ...` on a state directory.
fn set_aside(state: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new(bin("tidewatch-sensor"))
            .args(["buffer", "--state-dir"])
            .arg(state)
            .arg("set-aside")
            .args(args),
    )
}

/// The flows `read` reports for the capture, checked to be what the
/// generator made: `dns` DNS conversations with 16 names each, then 200
/// Modbus polls.
fn expected(pcap: &Path, dns: usize) -> Totals {
    let flows = read_flows(pcap);
    let by = |p: &str| flows.iter().filter(|f| f["app_protocol"] == p).count();
    assert_eq!(
        (by("dns"), by("modbus"), flows.len()),
        (dns, 200, dns + 200)
    );
    assert!(flows
        .iter()
        .filter(|f| f["app_protocol"] == "dns")
        .all(|f| f["indicators"].as_array().map(Vec::len) == Some(16)));
    totals(&flows)
}

/// The sensor "dns-flood" of `shore`, and a capture of `dns` DNS flows of
/// 16 random names then 200 Modbus polls with the totals `read` gives.
fn dns_flood(shore: &Shore, dns: u32) -> (tidewatch_tests::SensorCert, std::path::PathBuf, Totals) {
    let cert = shore.pki.sensor("dns-flood", "mv-hostile");
    let pcap = shore.stack.path().join("dns-flood.pcap");
    write_dns_flood_then_modbus(&pcap, dns, 16, 200, 1_700_000_000).unwrap();
    let want = expected(&pcap, dns as usize);
    (cert, pcap, want)
}

#[test]
fn flows_carrying_the_most_indicators_are_sealed_under_the_limit_and_stored_once() {
    let (shore, mport) = shore_with_ingest_metrics(&[]);
    let (stack, port) = (&shore.stack, shore.port);
    let (cert, pcap, want) = dns_flood(&shore, 4000);
    let state = stack.path().join("state");
    let mut s = SensorRun::new(&cert, port, &pcap, &state).spawn("sensor", stack.path());
    let st = s.wait(Duration::from_secs(180));
    let log = s.log_text();
    assert!(st.success(), "sensor failed:\n{log}");
    // Sealed small enough: the collector refused nothing and nothing was
    // split or set aside.
    assert!(
        log.contains("batches_refused=0 batches_set_aside=0"),
        "{log}"
    );
    assert_eq!(refused(mport), BTreeMap::new(), "ingest refused batches");
    expect_flows(stack, &BTreeMap::from([("dns-flood".to_string(), want)]));
}

#[test]
fn batches_over_the_collectors_limits_are_split_and_every_flow_stored_once() {
    // The sensor is configured above the collector: its batch of 4,000 such
    // flows breaks the gRPC stream (over ingest's message limit), the halves
    // are refused as too large, their halves go in.
    let (shore, mport) = shore_with_ingest_metrics(&[]);
    let (stack, port) = (&shore.stack, shore.port);
    let (cert, pcap, want) = dns_flood(&shore, 4000);
    let state = stack.path().join("state");
    let mut s = SensorRun::new(&cert, port, &pcap, &state)
        .args(&["--batch-flows", "4000", "--batch-max-bytes", "8000000"])
        .spawn("sensor", stack.path());
    let st = s.wait(Duration::from_secs(180));
    let log = s.log_text();
    assert!(st.success(), "sensor failed:\n{log}");
    assert!(
        log.contains("over its message limit") && log.contains("split into smaller ones"),
        "{log}"
    );
    assert!(log.contains("batches_set_aside=0"), "{log}");
    let r = refused(mport);
    assert!(
        r.contains_key("too_large") && r.contains_key("bad_grpc_message") && r.len() == 2,
        "{r:?}"
    );
    expect_flows(stack, &BTreeMap::from([("dns-flood".to_string(), want)]));
    // Ingest still serves: another sensor's upload goes through.
    let other = shore.pki.sensor("bridge", "mv-hostile");
    let modbus = tidewatch_tests::pcaps().join("modbus/modbus_example.pcap");
    let mut s = SensorRun::new(&other, port, &modbus, &stack.path().join("state-2"))
        .spawn("sensor-2", stack.path());
    assert!(
        s.wait(Duration::from_secs(60)).success(),
        "{}",
        s.log_text()
    );
}

#[test]
fn what_cannot_be_split_enough_is_set_aside_reported_ashore_and_retried_once() {
    // Ingest takes at most 1,000 bytes per batch: one such DNS flow alone
    // is larger, the Modbus flows fit once split small enough.
    let shore = Shore::builder()
        .ingest(&["--max-batch-bytes", "1000"])
        .sink(&[])
        .start();
    let (stack, port) = (&shore.stack, shore.port);
    let (cert, pcap, want) = dns_flood(&shore, 40);
    let state = stack.path().join("state");
    let mut s = SensorRun::new(&cert, port, &pcap, &state).spawn("sensor", stack.path());
    let st = s.wait(Duration::from_secs(180));
    let log = s.log_text();
    assert!(
        !st.success(),
        "a run with batches set aside must fail:\n{log}"
    );
    assert!(
        log.contains("40 batch(es) (40 flows) are set aside"),
        "{log}"
    );
    let list = set_aside(&state, &["list"]);
    assert!(list.contains("40 batch(es) set aside, 40 flows"), "{list}");
    assert!(list.contains("ACK_STATUS_TOO_LARGE"), "{list}");
    let seq: u64 = list
        .lines()
        .next()
        .and_then(|l| l.split("seq ").nth(1))
        .and_then(|r| r.split('\t').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seq in:\n{list}"));
    let shown = set_aside(&state, &["show", &seq.to_string()]);
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(shown.contains("\"app_protocol\":\"dns\""), "{shown}");
    // Only the Modbus flows are stored so far; the sensor's next status
    // (the next start) reports what it holds, with the reason.
    let modbus = want.flows - 40;
    deliver_or_fail(&shore, &cert, &state, "sensor-again");
    let reported = stack
        .query(
            "SELECT batches_set_aside, records_set_aside, set_aside_reason \
             FROM tidewatch.sensor_status ORDER BY observed_us DESC LIMIT 1",
        )
        .unwrap();
    assert!(
        reported.starts_with("40\t40\tACK_STATUS_TOO_LARGE"),
        "{reported}"
    );
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.flows"),
        modbus
    );
    // The operator raises the collector's limit and retries: every flow
    // goes up exactly once.
    let mut shore = shore;
    drop(shore.ingest.take());
    shore.ingest = Some(stack_ingest(&shore));
    let out = set_aside(&state, &["retry"]);
    assert!(out.contains("put 40 set-aside batch(es) back"), "{out}");
    assert!(set_aside(&state, &["list"]).contains("0 batch(es) set aside"));
    deliver_buffered(&cert, port, &state, "sensor-retried", shore.stack.path());
    expect_flows(
        &shore.stack,
        &BTreeMap::from([("dns-flood".to_string(), want)]),
    );
}

/// The sensor on an empty capture, which fails (batches are set aside)
/// after delivering what it can.
fn deliver_or_fail(shore: &Shore, cert: &tidewatch_tests::SensorCert, state: &Path, name: &str) {
    let empty = shore.stack.path().join(format!("{name}.pcap"));
    tidewatch_tests::pcapgen::write_udp_flows(&empty, 0, 0, 1_700_000_000).unwrap();
    let mut s = SensorRun::new(cert, shore.port, &empty, state).spawn(name, shore.stack.path());
    let st = s.wait(Duration::from_secs(60));
    assert!(
        !st.success() && s.log_text().contains("are set aside"),
        "{}",
        s.log_text()
    );
    // Its status batch is stored before the check below.
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while shore
        .stack
        .query_u64("SELECT count() FROM tidewatch.sensor_status WHERE batches_set_aside > 0")
        == 0
    {
        assert!(
            std::time::Instant::now() < end,
            "no status with the set-aside batches"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ingest again on the shore's port, with its default limits.
fn stack_ingest(shore: &Shore) -> tidewatch_tests::Proc {
    shore.stack.ingest(&shore.pki, shore.port, &[])
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

fn zstd_request(seq: u64, wire: &[u8]) -> UploadRequest {
    UploadRequest {
        seq,
        encoding: Encoding::ProtobufZstd as i32,
        payload: zstd::bulk::compress(wire, 19).unwrap(),
    }
}

#[test]
fn decompression_and_protobuf_bombs_are_refused_in_bounded_memory_while_others_are_served() {
    let (shore, mport) = shore_with_ingest_metrics(&[]);
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let attacker = pki.sensor("stolen-box", "mv-hostile");
    let ca = pki.dir.join("ca.pem");
    let cc = ClientCert::of(&attacker);
    // Each a few KB on the wire; prost would make GBs of them.
    let empty_flows = [0x22u8, 0x00]; // field 4 (flows), length 0
    let operations = Batch {
        seq: 3,
        flows: vec![FlowRecord {
            operations: vec![Operation::default(); 1_000_000],
            ..FlowRecord::default()
        }],
        ..Batch::default()
    };
    let indicator = Batch {
        seq: 4,
        flows: vec![FlowRecord {
            indicators: vec!["a".repeat(12 << 20)],
            ..FlowRecord::default()
        }],
        ..Batch::default()
    };
    // In the columnar layout a string is written once and referred to by
    // index: 16 references in each of 50,000 flows to one 128-byte
    // indicator would be 100 MB of strings from a few KB.
    let name = "n".repeat(128);
    let fanout = Batch {
        seq: 5,
        flows: vec![
            FlowRecord {
                indicators: vec![name; 16],
                ..FlowRecord::default()
            };
            50_000
        ],
        ..Batch::default()
    };
    let columns =
        tidewatch_proto::codec::encode(&fanout, tidewatch_proto::codec::Layout::Columns, Some(19));
    drop(fanout);
    let bombs = |round: u64| {
        let s = round * 10;
        let with_seq = |mut b: Batch, seq: u64| {
            b.seq = seq;
            zstd_request(seq, &b.encode_to_vec())
        };
        let mut r = vec![
            // 64 MiB of 2-byte empty records: past the decompression limit.
            zstd_request(s + 1, &empty_flows.repeat(32 << 20)),
            // 4 million empty records within the byte limit.
            zstd_request(s + 2, &empty_flows.repeat(4 << 20)),
            with_seq(operations.clone(), s + 3),
            with_seq(indicator.clone(), s + 4),
            UploadRequest {
                seq: s + 5,
                ..columns.clone()
            },
        ];
        for q in &mut r {
            // The seq in the payload (absent for the raw floods) need not
            // match: the shape is refused first.
            assert!(q.payload.len() < 100_000, "{}", q.payload.len());
        }
        r
    };
    let before = peak_rss_kib(shore.ingest.as_ref().unwrap().pid());
    for round in 0..5 {
        let acks = upload(port, &ca, Some(cc), bombs(round)).unwrap();
        let got: Vec<(i32, bool)> = acks.iter().map(|a| (a.status, a.retryable)).collect();
        assert_eq!(
            got,
            [
                (AckStatus::TooLarge as i32, false),
                (AckStatus::TooLarge as i32, false),
                (AckStatus::Malformed as i32, false),
                (AckStatus::Malformed as i32, false),
                (AckStatus::TooLarge as i32, false),
            ],
            "{acks:#?}"
        );
        assert!(acks[2].detail.contains("operations") && acks[3].detail.contains("indicator"));
        assert!(
            acks[4].detail.contains("expands to more than"),
            "{:?}",
            acks[4]
        );
    }
    let after = peak_rss_kib(shore.ingest.as_ref().unwrap().pid());
    println!("ingest peak RSS: {before} KiB before the bombs, {after} KiB after");
    // Materialised, the second bomb alone would be about 1 GB of records.
    assert!(after < 256 * 1024, "ingest peak RSS {after} KiB");
    let r = refused(mport);
    assert_eq!(
        (
            r.get("decompressed_too_large"),
            r.get("too_many_records"),
            r.get("oversized_field")
        ),
        (Some(&10.0), Some(&5.0), Some(&10.0)),
        "{r:?}"
    );
    // Still serving: another sensor's batch is acked and stored.
    let honest = pki.sensor("honest", "mv-hostile");
    let hc = ClientCert::of(&honest);
    let acks = upload(port, &ca, Some(hc), vec![request(1, 7, "")]).unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");
    expect_flows(
        stack,
        &BTreeMap::from([("honest".to_string(), flow_totals(7))]),
    );
}

#[test]
fn a_record_the_sink_cannot_store_is_dead_lettered_alone_and_the_rest_stored() {
    let (shore, mport) = shore_with_ingest_metrics(&[]);
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let s = pki.sensor("odd", "mv-hostile");
    let ca = pki.dir.join("ca.pem");
    let cc = ClientCert::of(&s);
    let good = tidewatch_tests::grpc::flow;
    let mut short_address = good(3);
    short_address.server_ip = vec![10, 1, 0];
    let mut big_port = good(4);
    big_port.client_port = 70_000;
    let mixed = request_with(
        1,
        vec![good(0), short_address.clone(), good(1), big_port, good(2)],
    );
    let all_bad = request_with(2, vec![short_address.clone(), short_address]);
    let acks = upload(port, &ca, Some(cc), vec![mixed, all_bad]).unwrap();
    let got: Vec<(i32, u32)> = acks.iter().map(|a| (a.status, a.records)).collect();
    assert_eq!(
        got,
        [
            (AckStatus::Accepted as i32, 3),
            (AckStatus::Malformed as i32, 0)
        ],
        "{acks:#?}"
    );
    assert!(
        acks[0].detail.contains("2 flow record(s) cannot be stored"),
        "{acks:?}"
    );
    assert!(
        acks[1].detail.contains("no record can be stored"),
        "{acks:?}"
    );
    expect_flows(
        stack,
        &BTreeMap::from([("odd".to_string(), flow_totals(3))]),
    );
    // The two bad records went to the dead-letter topic, one each.
    tidewatch_tests::wait_until(Duration::from_secs(30), "two dead letters", || {
        (stack.kafka_records(tidewatch_proto::DEADLETTER_TOPIC) == 2).then_some(())
    });
    let text = http_get(mport, "/metrics").unwrap();
    assert!(
        text.contains("tidewatch_ingest_bad_records_total 2"),
        "{text}"
    );
    assert_eq!(
        refused(mport),
        BTreeMap::from([("bad_records".to_string(), 1.0)])
    );
    assert_eq!(
        stack.query_u64("SELECT flows FROM tidewatch.batches WHERE sensor_id = 'odd'"),
        3
    );
}

#[test]
fn a_reinstalled_sensor_loses_nothing_and_a_seq_set_back_is_reported() {
    let (shore, mport) = shore_with_ingest_metrics(&[]);
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let cert = pki.sensor("crane-9", "port-of-rostock");
    let corpus = tidewatch_tests::pcaps();
    let mut want = Totals::default();
    // The box, then its replacement with the same certificate and a new
    // (empty) state directory.
    for (i, capture) in ["modbus/modbus_example.pcap", "dnp3/dnp3_example.pcap"]
        .iter()
        .enumerate()
    {
        let pcap = corpus.join(capture);
        let t = totals(&read_flows(&pcap));
        want = Totals {
            flows: want.flows + t.flows,
            packets: want.packets + t.packets,
            bytes: want.bytes + t.bytes,
        };
        let state = stack.path().join(format!("state-{i}"));
        let mut s = SensorRun::new(&cert, port, &pcap, &state)
            .args(&["--batch-flows", "5"])
            .spawn(&format!("sensor-{i}"), stack.path());
        assert!(
            s.wait(Duration::from_secs(60)).success(),
            "{}",
            s.log_text()
        );
    }
    expect_flows(stack, &BTreeMap::from([("crane-9".to_string(), want)]));
    // A batch under a seq from long before (a clock set back): stored, as
    // nothing holds that seq, and reported.
    let ca = pki.dir.join("ca.pem");
    let cc = ClientCert::of(&cert);
    let acks = upload(port, &ca, Some(cc), vec![request(5, 1, "")]).unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");
    let text = http_get(mport, "/metrics").unwrap();
    assert!(
        text.contains("tidewatch_ingest_seq_regressions_total 1"),
        "{text}"
    );
    assert!(shore
        .ingest
        .as_ref()
        .unwrap()
        .log_text()
        .contains("seq regression"));
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size}"),
                    "tidewatch-test",
                ])
                .arg(dir),
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_drops_the_oldest_batches_counts_them_and_metering_goes_on() {
    // The collector is away while the sensor meters 20,000 flows into a
    // 2 MiB filesystem that another file has mostly filled: the buffer's own
    // cap (4 MiB) is never reached, the disk is.
    let shore = Shore::builder().sink(&[]).start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let cert = pki.sensor("deck-1", "mv-full");
    let disk = SmallDisk::mount(&stack.path().join("small"), "2m");
    std::fs::write(disk.0.join("filler"), vec![0u8; 1200 * 1024]).unwrap();
    let pcap = stack.path().join("many.pcap");
    tidewatch_tests::pcapgen::write_udp_flows(&pcap, 20_000, 2, 1_700_000_000).unwrap();
    let state = disk.0.join("state");
    let mport = free_port();
    let mut s = SensorRun::new(&cert, port, &pcap, &state)
        .args(&[
            "--batch-flows",
            "200",
            "--no-compress",
            // Sized on uncompressed protobuf batches.
            "--batch-layout",
            "protobuf",
            "--buffer-max-mib",
            "4",
            "--metrics-listen",
            &format!("127.0.0.1:{mport}"),
        ])
        .spawn("sensor", stack.path());
    s.wait_log("capture metered", Duration::from_secs(60));
    s.wait_log(
        "disk full: dropped the oldest buffered batches",
        Duration::from_secs(30),
    );
    let text = http_get(mport, "/metrics").unwrap();
    let dropped: f64 = text
        .lines()
        .filter(|l| l.starts_with("tidewatch_sensor_dropped_flows_total{cause=\"disk_full\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert!(dropped > 0.0, "{text}");
    // The collector comes back: what is left is delivered, and the drops
    // are reported ashore; metered = stored + dropped, nothing silently lost.
    let _ingest = stack.ingest(pki, port, &[]);
    let st = s.wait(Duration::from_secs(120));
    assert!(st.success(), "{}", s.log_text());
    let stored = tidewatch_tests::wait_until(Duration::from_secs(60), "flows and status", || {
        let reported = stack.query_u64(
            "SELECT max(records_dropped) FROM tidewatch.sensor_status WHERE sensor_id = 'deck-1'",
        );
        let stored =
            stack.query_u64("SELECT count() FROM tidewatch.flows WHERE sensor_id = 'deck-1'");
        (reported > 0 && stored + reported == 20_000).then_some(stored)
    });
    assert!(stored > 0, "nothing delivered");
    println!(
        "full disk: {stored} flows stored, {} dropped and reported",
        20_000 - stored
    );
    drop(disk);
}

#[test]
fn flows_of_300_days_are_stored_whole_and_impossible_times_dead_lettered_with_a_count() {
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let cert = pki.sensor("archive", "mv-replay");
    let state = stack.path().join("state");
    let now_s = (tidewatch_proto::util::now_us() / 1_000_000) as u32;
    let day_us = 86_400_000_000u64;
    // 300 flows one day apart ending yesterday (one batch), then 5 flows
    // from a clock at 1970, then 5 from a clock a month ahead.
    let runs = [
        ("days", 300, now_s - 301 * 86_400, day_us),
        ("epoch", 5, 1_000, 1_000_000),
        ("future", 5, now_s + 30 * 86_400, 1_000_000),
    ];
    let mut want = Totals::default();
    for (name, flows, start, spacing) in runs {
        let pcap = stack.path().join(format!("{name}.pcap"));
        tidewatch_tests::pcapgen::write_udp_flows_spaced(&pcap, flows, 2, start, spacing).unwrap();
        if name == "days" {
            want = totals(&read_flows(&pcap));
            assert_eq!(want.flows, 300);
        }
        let mut s = SensorRun::new(&cert, port, &pcap, &state).spawn(name, stack.path());
        assert!(
            s.wait(Duration::from_secs(60)).success(),
            "{}",
            s.log_text()
        );
    }
    expect_flows(stack, &BTreeMap::from([("archive".to_string(), want)]));
    // One flow a day on 300 days, each rolled up once.
    assert_eq!(
        stack.query_u64("SELECT uniqExact(toDate(first_seen)) FROM tidewatch.flows"),
        300
    );
    assert_eq!(
        stack.query_u64("SELECT sum(flows) FROM tidewatch.traffic_hourly"),
        300
    );
    // The ten flows of impossible times (and the asset each of those runs
    // observed then) are in the dead-letter topic, each alone.
    tidewatch_tests::wait_until(Duration::from_secs(30), "twelve dead letters", || {
        (stack.kafka_records(tidewatch_proto::DEADLETTER_TOPIC) == 12).then_some(())
    });
    let sink = shore.sink.as_ref().unwrap().log_text();
    let flows_refused = |why: &str| {
        sink.lines()
            .filter(|l| l.contains("record cannot be stored") && l.contains("kind=\"flow\""))
            .filter(|l| l.contains(why))
            .count()
    };
    assert_eq!(flows_refused("before 2000-01-01"), 5, "{sink}");
    assert_eq!(
        flows_refused("days after the batch was received"),
        5,
        "{sink}"
    );
}

#[test]
fn a_row_clickhouse_refuses_is_isolated_and_dead_lettered_and_the_rest_stored_whole() {
    let shore = Shore::builder().ingest(&[]).start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    // A rule the server enforces on the data itself: this port is refused
    // at insert (a permanent error, code 395), before anything is written.
    stack
        .query(
            "ALTER TABLE tidewatch.flows_raw ADD COLUMN poison UInt8 DEFAULT throwIf(client_port = 666)",
        )
        .unwrap();
    let smport = free_port();
    let sink = stack.sink(
        "sink",
        &["--metrics-listen", &format!("127.0.0.1:{smport}")],
    );
    let s = pki.sensor("poisoned", "mv-hostile");
    let ca = pki.dir.join("ca.pem");
    let cc = ClientCert::of(&s);
    let flow = tidewatch_tests::grpc::flow;
    let mut poison = flow(3);
    poison.client_port = 666;
    let reqs = vec![
        request_with(1, vec![flow(0), flow(1), poison, flow(2)]),
        request(2, 5, ""),
    ];
    let acks = upload(port, &ca, Some(cc), reqs).unwrap();
    assert!(
        acks.iter().all(|a| a.status == AckStatus::Accepted as i32),
        "{acks:?}"
    );
    expect_flows(
        stack,
        &BTreeMap::from([("poisoned".to_string(), flow_totals(8))]),
    );
    // The hourly rollup holds every stored flow once, the refused one not.
    assert_eq!(
        stack.query_u64(
            "SELECT sum(flows) FROM tidewatch.traffic_hourly WHERE sensor_id = 'poisoned'"
        ),
        8
    );
    tidewatch_tests::wait_until(Duration::from_secs(30), "one dead letter", || {
        (stack.kafka_records(tidewatch_proto::DEADLETTER_TOPIC) == 1).then_some(())
    });
    let text = http_get(smport, "/metrics").unwrap();
    assert!(
        text.contains("tidewatch_sink_rows_refused_total 1"),
        "{text}"
    );
    assert!(sink
        .log_text()
        .contains("halving it to find the refused rows"));
}

#[test]
fn dead_letters_are_listed_shown_and_a_batch_replayed_after_the_fix_counts_once() {
    // A sink that takes at most 3 records per batch dead-letters a batch of
    // five whole; a flow with a bad port is dead-lettered alone.
    let shore = Shore::builder().ingest(&[]).start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let mut sink = stack.sink("sink-strict", &["--max-batch-records", "3"]);
    let s = pki.sensor("late", "mv-hostile");
    let ca = pki.dir.join("ca.pem");
    let cc = ClientCert::of(&s);
    let flow = tidewatch_tests::grpc::flow;
    let mut bad_port = flow(9);
    bad_port.server_port = 99_999;
    let reqs = vec![
        request(1, 5, ""),
        request(2, 2, ""),
        request_with(3, vec![flow(0), bad_port, flow(1)]),
    ];
    let acks = upload(port, &ca, Some(cc), reqs).unwrap();
    assert!(
        acks.iter().all(|a| a.status == AckStatus::Accepted as i32),
        "{acks:?}"
    );
    tidewatch_tests::wait_until(Duration::from_secs(30), "two dead letters", || {
        (stack.kafka_records(tidewatch_proto::DEADLETTER_TOPIC) == 2).then_some(())
    });
    // Something else written to the topic: listed, not fatal.
    {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let p: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", stack.kafka_brokers())
            .create()
            .unwrap();
        p.send(
            BaseRecord::<[u8], [u8]>::to(tidewatch_proto::DEADLETTER_TOPIC)
                .payload(&b"\xff\xfe junk"[..]),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
    }
    let deadletter = |args: &[&str]| run_ok(stack.collector().arg("deadletter").args(args));
    let list = deadletter(&["list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert!(lines[2].starts_with("0/2\tnot-a-letter\t"), "{list}");
    assert!(
        lines[0].starts_with("0/0\tbatch\tlate\t1\t") && lines[0].contains("records exceed"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("0/1\tflow\tlate\t3\t") && lines[1].contains("port 99999"),
        "{list}"
    );
    let shown: serde_json::Value = serde_json::from_str(&deadletter(&["show", "0/1"])).unwrap();
    assert_eq!(shown["value"]["server_port"], 99_999, "{shown}");
    let shown: serde_json::Value = serde_json::from_str(&deadletter(&["show", "0/0"])).unwrap();
    assert_eq!(
        shown["value"]["batch"]["flows"].as_array().unwrap().len(),
        5,
        "{shown}"
    );
    // A record letter cannot be replayed.
    let refused = stack
        .collector()
        .args(["deadletter", "replay", "0/1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    // The fix: a sink with the default limits. Replaying once stores the
    // batch; replaying again changes nothing.
    assert!(sink.terminate().is_some_and(|st| st.success()));
    let smport = free_port();
    let _sink = stack.sink(
        "sink",
        &["--metrics-listen", &format!("127.0.0.1:{smport}")],
    );
    let mut want = flow_totals(4);
    expect_flows(stack, &BTreeMap::from([("late".to_string(), want)]));
    for _ in 0..2 {
        let out = deadletter(&["replay"]);
        assert!(
            out.contains("replayed 1 batch letter(s)")
                && out.contains(
                    "2 other letter(s) (one record each, or not a letter) are not replayable"
                ),
            "{out}"
        );
    }
    want = flow_totals(9);
    expect_flows(stack, &BTreeMap::from([("late".to_string(), want)]));
    tidewatch_tests::wait_until(Duration::from_secs(30), "the second replay skipped", || {
        (tidewatch_tests::metric(smport, "tidewatch_sink_duplicate_batches_skipped_total")? == 1.0)
            .then_some(())
    });
}

/// Opens `n` TCP connections to 127.0.0.1:`port` that never say anything
/// and holds them `secs` seconds; prints how many it opened (a Python
/// child, which raises its own open-file limit).
fn idle_flood(port: u16, n: usize, secs: u64) -> std::process::Child {
    Command::new("python3")
        .arg("-c")
        .arg(
            "import resource, socket, sys, time\n\
             port, n, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])\n\
             soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
             want = n + 64 if hard == resource.RLIM_INFINITY else min(hard, n + 64)\n\
             resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))\n\
             held = []\n\
             for _ in range(n):\n\
             \x20   s = socket.socket()\n\
             \x20   s.connect(('127.0.0.1', port))\n\
             \x20   held.append(s)\n\
             print(len(held), flush=True)\n\
             time.sleep(secs)\n",
        )
        .args([port.to_string(), n.to_string(), secs.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3")
}

#[test]
fn a_thousand_streams_of_one_sensor_and_two_thousand_idle_connections_are_bounded() {
    let (shore, mport) =
        shore_with_ingest_metrics(&["--max-handshakes", "64", "--handshake-timeout-secs", "3"]);
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let ingest_pid = shore.ingest.as_ref().unwrap().pid();
    let ca = pki.dir.join("ca.pem");
    let greedy = pki.sensor("greedy", "mv-hostile");
    let honest = pki.sensor("honest", "mv-hostile");
    let rss_before = peak_rss_kib(ingest_pid);

    // 1. One certificate, 20 connections × 50 upload streams held open.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (opened, turned_away) = rt.block_on(async {
        let mut held = Vec::new();
        let mut channels = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let cc = ClientCert::of(&greedy);
            let Ok(ch) = tidewatch_tests::grpc::channel(port, &ca, Some(cc)).await else {
                continue;
            };
            // Held open, as an attacker would.
            channels.push(ch.clone());
            for _ in 0..50 {
                let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(1);
                held.push(tx);
                let mut client = tidewatch_proto::v1::uplink_client::UplinkClient::new(ch.clone());
                tasks.push(tokio::spawn(async move {
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        client.upload(tokio_stream::wrappers::ReceiverStream::new(rx)),
                    )
                    .await;
                    match r {
                        Ok(Ok(resp)) => Some(resp.into_inner()),
                        _ => None,
                    }
                }));
            }
        }
        let mut opened = Vec::new();
        let mut turned_away = 0;
        for t in tasks {
            match t.await.unwrap() {
                Some(s) => opened.push(s),
                None => turned_away += 1,
            }
        }
        // While they are held: the honest sensor's batch goes through.
        let hc = ClientCert::of(&honest);
        let ch = tidewatch_tests::grpc::channel(port, &ca, Some(hc))
            .await
            .unwrap();
        let mut client = tidewatch_proto::v1::uplink_client::UplinkClient::new(ch);
        let mut acks = client
            .upload(tokio_stream::iter(vec![request(1, 3, "")]))
            .await
            .unwrap()
            .into_inner();
        let ack = acks.message().await.unwrap().unwrap();
        assert_eq!(ack.status, AckStatus::Accepted as i32, "{ack:?}");
        let n = opened.len();
        drop((held, opened, channels));
        (n, turned_away)
    });
    println!("one certificate: {opened} upload streams open, {turned_away} refused");
    assert!(opened <= 8, "{opened} streams of one sensor open");
    assert_eq!(opened + turned_away, 1000);
    let r = refused(mport);
    assert!(
        r.get("sensor_stream_limit").copied().unwrap_or(0.0) > 0.0,
        "{r:?}"
    );
    assert!(
        r.get("sensor_connection_limit").copied().unwrap_or(0.0) > 0.0,
        "{r:?}"
    );

    // 2. Two thousand connections that never start TLS.
    let mut flood = idle_flood(port, 2000, 6);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        "2000",
        "the flood could not open its connections"
    );
    // Handshake places free up within the handshake timeout: a sensor
    // reconnecting with backoff gets in.
    let hc = ClientCert::of(&honest);
    let acks =
        tidewatch_tests::wait_until(Duration::from_secs(30), "the honest sensor served", || {
            upload(port, &ca, Some(hc), vec![request(2, 3, "")]).ok()
        });
    assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");
    let _ = flood.kill();
    let _ = flood.wait();
    let r = refused(mport);
    assert!(
        r.get("handshake_limit").copied().unwrap_or(0.0) >= 1000.0,
        "{r:?}"
    );
    let rss_after = peak_rss_kib(ingest_pid);
    println!("ingest peak RSS: {rss_before} KiB before, {rss_after} KiB after both floods");
    assert!(rss_after < 256 * 1024, "ingest peak RSS {rss_after} KiB");
    expect_flows(
        stack,
        &BTreeMap::from([("honest".to_string(), flow_totals(6))]),
    );
}

#[test]
fn a_cap_of_zero_is_refused_clearly() {
    for flag in [
        "--max-handshakes",
        "--max-streams-per-sensor",
        "--kafka-queue-mib",
    ] {
        let out = Command::new(bin("tidewatch-collector"))
            .args([
                "ingest",
                "--listen",
                "127.0.0.1:1",
                "--tls-cert",
                "x",
                "--tls-key",
                "x",
            ])
            .args(["--client-ca", "x", "--envelope-signing-key", "x", flag, "0"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(&format!("{flag} must be at least 1")), "{err}");
    }
}

#[test]
fn batches_of_one_stream_reach_kafka_in_the_order_sent_though_checked_side_by_side() {
    // Large and small batches alternate: checked on the blocking pool side
    // by side, a small one is ready first, yet Kafka gets them in order.
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let s = pki.sensor("ordered", "mv-hostile");
    let ca = pki.dir.join("ca.pem");
    let reqs: Vec<UploadRequest> = (1..=30)
        .map(|seq| request(seq, if seq % 2 == 1 { 3000 } else { 1 }, ""))
        .collect();
    let acks = upload(port, &ca, Some(ClientCert::of(&s)), reqs).unwrap();
    assert!(
        acks.iter().all(|a| a.status == AckStatus::Accepted as i32),
        "{acks:?}"
    );
    expect_flows(
        stack,
        &BTreeMap::from([("ordered".to_string(), flow_totals(15 * 3000 + 15))]),
    );
    let offsets: Vec<i64> = stack
        .query("SELECT kafka_offset FROM tidewatch.batches FINAL WHERE sensor_id = 'ordered' ORDER BY seq")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (0..30).collect::<Vec<i64>>(),
        "Kafka order differs from the stream's"
    );
}
