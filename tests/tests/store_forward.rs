//! Ship-side store-and-forward: batches live in the sensor's disk buffer
//! until the collector acks them, across a kill -9 of the sensor.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use tidewatch_tests::*;

/// Runs `tidewatch-sensor buffer CMD --state-dir STATE`, which must succeed.
fn buffer_cmd(cmd: &str, state: &std::path::Path) -> String {
    run_ok(
        Command::new(bin("tidewatch-sensor"))
            .args(["buffer", cmd, "--state-dir"])
            .arg(state),
    )
}

/// The summary line of `tidewatch-sensor buffer stats|check`.
fn total_line(out: &str) -> &str {
    out.lines()
        .rfind(|l| l.starts_with("total: "))
        .unwrap_or_else(|| panic!("no total line in:\n{out}"))
}

#[test]
fn kill_9_while_the_collector_is_away_loses_nothing() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-buffer");
    let port = free_port();
    let state = stack.path().join("state");
    let pcap = pcaps().join("dnp3/dnp3_example.pcap");
    let expected = totals(&read_flows(&pcap));

    // No collector yet: the sensor meters everything into its buffer and
    // keeps trying to connect; then it is killed without warning.
    let mut s = SensorRun::new(&s1, port, &pcap, &state)
        .args(&["--batch-flows", "2"])
        .spawn("sensor-1", stack.path());
    s.wait_log("cannot connect to collector", Duration::from_secs(30));
    // Killed only once everything is on disk (the uplink may give up
    // connecting before metering has finished).
    s.wait_log(
        "metering done; every record is in the disk buffer",
        Duration::from_secs(30),
    );
    s.kill();
    let stats = buffer_cmd("stats", &state);
    let total = total_line(&stats);
    assert!(total.ends_with(" 0 damaged records"), "{stats}");
    let pending: u64 = total
        .split(" batches not yet acked")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no backlog in {stats}"));
    assert!(pending >= 6, "only {pending} batches buffered:\n{stats}");
    buffer_cmd("check", &state);

    // Collector up; the sensor restarts on an empty capture and delivers the
    // backlog from disk.
    let _ingest = stack.ingest(pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    let s2 = deliver_buffered(&s1, port, &state, "sensor-2", stack.path());
    assert!(
        s2.log_text()
            .contains("resuming upload of batches buffered before the restart"),
        "{}",
        s2.log_text()
    );
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    expect_flows(stack, &want);
    assert_eq!(
        ch_totals(stack, "flows_raw"),
        want,
        "a buffered batch was stored twice"
    );
    // Everything acked: the buffer holds nothing pending any more.
    let after = buffer_cmd("stats", &state);
    assert!(
        total_line(&after).contains(" 0 batches not yet acked"),
        "{after}"
    );
}

#[test]
fn repeated_kill_9_during_upload_loses_and_duplicates_nothing() {
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let s1 = pki.sensor("s1", "mv-kill");
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
        let mut s = SensorRun::new(&s1, link.port, input, &state)
            .args(&args)
            .spawn(&format!("sensor-{i}"), stack.path());
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
    let mut last = SensorRun::new(&s1, link.port, &empty, &state)
        .args(&args)
        .spawn("sensor-final", stack.path());
    assert!(
        last.wait(Duration::from_secs(120)).success(),
        "{}",
        last.log_text()
    );
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    expect_flows(stack, &want);
    let after = buffer_cmd("stats", &state);
    let total = total_line(&after);
    assert!(
        total.contains(" 0 batches not yet acked") && total.ends_with(" 0 damaged records"),
        "{after}"
    );
}

/// A 1 MiB buffer overflows while the collector is away (about 2 MiB of
/// batches, `--when-full POLICY`); once it is back, every kept flow arrives,
/// the loss is reported ashore in the sensor status, and stored plus
/// dropped is the whole capture. Returns, in capture order, whether each
/// flow was kept.
fn overflow_during_an_outage(policy: &str) -> Vec<bool> {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-outage");
    let port = free_port();
    let state = stack.path().join("state");
    let pcap = stack.path().join("flows.pcap");
    pcapgen::write_udp_flows(&pcap, 30_000, 2, 1_700_000_000).unwrap();
    let flows = read_flows(&pcap);
    let expected = totals(&flows);
    let mut s = SensorRun::new(&s1, port, &pcap, &state)
        .args(&[
            "--buffer-max-mib",
            "1",
            "--no-compress",
            // Sized on uncompressed protobuf batches.
            "--batch-layout",
            "protobuf",
            "--batch-flows",
            "500",
            "--when-full",
            policy,
        ])
        .spawn("sensor", stack.path());
    // The link is down: everything goes to the buffer, which overflows.
    s.wait_log("disk buffer full", Duration::from_secs(60));
    s.wait_log("cannot connect to collector", Duration::from_secs(60));
    // The link comes back.
    let _ingest = stack.ingest(pki, port, &[]);
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
    // Whole batches are missing.
    let batches = stack.query_u64("SELECT uniqExact(batch_seq) FROM tidewatch.flows");
    assert!(
        batches < expected.flows.div_ceil(500),
        "no batch missing ({batches})"
    );
    let mut starts: Vec<i64> = flows
        .iter()
        .map(|f| (f["first_seen"].as_f64().unwrap() * 1e6).round() as i64)
        .collect();
    starts.sort();
    let kept: std::collections::BTreeSet<i64> = stack
        .query("SELECT first_seen_us FROM tidewatch.flows")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let near = |t: i64| (t - 1..=t + 1).any(|x| kept.contains(&x));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.flows") + dropped,
        expected.flows
    );
    starts.iter().map(|t| near(*t)).collect()
}

/// Runs of dropped (false) flows.
fn dropped_runs(marks: &[bool]) -> usize {
    marks.windows(2).filter(|w| w[0] && !w[1]).count() + usize::from(!marks[0])
}

#[test]
fn buffer_cap_during_an_outage_drops_the_oldest_and_reports_it_ashore() {
    let marks = overflow_during_an_outage("drop-oldest");
    // In capture order the missing flows are one run: the oldest batches
    // still on disk when the cap was reached (the few already handed to the
    // uplink before that are in flight, not lost). The newest are kept.
    assert!(
        marks.last().copied().unwrap(),
        "the newest flow was dropped"
    );
    assert_eq!(
        dropped_runs(&marks),
        1,
        "the dropped flows are not one run of the oldest on disk"
    );
}

#[test]
fn buffer_cap_with_drop_newest_keeps_the_oldest_and_still_reports_the_loss() {
    let marks = overflow_during_an_outage("drop-newest");
    // The oldest are kept, the newest refused: one run at the end.
    assert!(marks[0], "the oldest flow was dropped");
    assert!(!marks.last().copied().unwrap(), "the newest flow was kept");
    assert_eq!(
        dropped_runs(&marks),
        1,
        "the dropped flows are not one run of the newest"
    );
}

/// Sends one UDP datagram per flow from `src_port` to 127.0.0.1 on a new
/// destination port each time (nobody listens), `rate` per second, until
/// killed.
const TRAFFIC: &str = r#"
import socket, sys, time
src, rate = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", src))
i = 0
start = time.monotonic()
while True:
    s.sendto(b"tidewatch-kill-test", ("127.0.0.1", 30000 + i % 20000))
    i += 1
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"#;

#[test]
fn repeated_kill_9_during_live_capture_loses_nothing_acked_and_counts_nothing_twice() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-live-kill");
    let port = free_port();
    let ingest = stack.ingest(pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    let state = stack.path().join("state");
    let src = free_port();
    let mut traffic = Proc::spawn(
        "traffic",
        stack.path(),
        Command::new("python3").args(["-c", TRAFFIC, &src.to_string(), "200"]),
    );
    let live = |name: &str| {
        let mut cmd = Command::new(bin("tidewatch-sensor"));
        cmd.arg("run")
            .args(["--interface", "lo"])
            .args(["--filter", &format!("udp and src port {src}")])
            .args(["--collector", &format!("https://127.0.0.1:{port}")])
            .args(["--server-name", "localhost"])
            .arg("--ca")
            .arg(&s1.ca)
            .arg("--cert")
            .arg(&s1.cert)
            .arg("--key")
            .arg(&s1.key)
            .arg("--state-dir")
            .arg(&state)
            .args(["--idle-timeout", "1", "--flush-interval", "0.3"])
            .args(["--batch-flows", "40", "--fsync", "every-batch"])
            .env("RUST_LOG", "info,tidewatch_sensor::uplink=debug");
        Proc::spawn(name, stack.path(), &mut cmd)
    };

    // Kill -9 at pseudo-random moments while the sensor captures, meters,
    // writes its buffer and uploads; restart each time.
    let mut logs = Vec::new();
    let windows_ms = [3300u64, 2100, 4100, 2700, 3600, 1900];
    for (i, ms) in windows_ms.iter().enumerate() {
        let mut s = live(&format!("sensor-{i}"));
        s.wait_log("live capture started", Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(*ms));
        assert!(s.try_wait().is_none(), "sensor exited:\n{}", s.log_text());
        s.kill();
        logs.push(s.log_text());
    }
    // A last run stops cleanly; then the traffic stops and a file run with
    // nothing to meter drains what the buffer still holds.
    let mut s = live("sensor-last");
    s.wait_log("live capture started", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    traffic.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let st = s.terminate().expect("sensor stops on SIGTERM");
    assert!(st.success(), "{}", s.log_text());
    logs.push(s.log_text());
    let empty = stack.path().join("empty.pcap");
    pcapgen::write_udp_flows(&empty, 0, 0, 1_700_000_000).unwrap();
    let mut drain = SensorRun::new(&s1, port, &empty, &state).spawn("drain", stack.path());
    assert!(
        drain.wait(Duration::from_secs(120)).success(),
        "{}",
        drain.log_text()
    );

    // Every batch any run saw acked is stored.
    let acked: std::collections::BTreeSet<u64> = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("batch acked"))
        .filter_map(|l| {
            l.split("seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        acked.len() >= 20,
        "only {} batches acked before the kills",
        acked.len()
    );
    let stored = wait_until(
        Duration::from_secs(60),
        "acked batches in ClickHouse",
        || {
            let stored: std::collections::BTreeSet<u64> = stack
                .query("SELECT seq FROM tidewatch.batches FINAL WHERE sensor_id = 's1'")
                .ok()?
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            acked.is_subset(&stored).then_some(stored)
        },
    );
    assert!(stored.len() >= acked.len());
    // No flow counted twice: each datagram is its own flow (unique port).
    let n = stack.query_u64("SELECT count() FROM tidewatch.flows");
    let distinct = stack.query_u64(
        "SELECT uniqExact(client_port, server_port, first_seen_us) FROM tidewatch.flows",
    );
    assert_eq!(n, distinct, "a flow was stored twice");
    assert_eq!(
        stack.query_u64(&format!(
            "SELECT count() FROM tidewatch.flows WHERE client_port != {src} OR c2s_packets != 1"
        )),
        0
    );
    // A kill costs what was still in memory: about the last idle timeout +
    // flush interval (1.3 s) of flows of each run. The final run loses
    // nothing. Allow half of that for a loaded machine.
    let kept_ms: u64 = windows_ms
        .iter()
        .map(|w| w.saturating_sub(1300))
        .sum::<u64>()
        + 2000;
    let floor = 200 * kept_ms / 1000 / 2;
    assert!(
        n >= floor,
        "only {n} flows stored, expected at least {floor}"
    );
    drop(ingest);
}

#[test]
fn a_corrupted_buffer_is_detected_skipped_counted_and_the_rest_delivered() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-torn");
    let port = free_port();
    let state = stack.path().join("state");
    let pcap = stack.path().join("flows.pcap");
    pcapgen::write_udp_flows(&pcap, 6000, 2, 1_700_000_000).unwrap();
    let expected = totals(&read_flows(&pcap));
    // 300 batches of 20 flows, uncompressed, in 128 KiB segments.
    let args = [
        "--batch-flows",
        "20",
        "--no-compress",
        // Sized on uncompressed protobuf batches.
        "--batch-layout",
        "protobuf",
        "--buffer-max-mib",
        "1",
        "--fsync",
        "every-batch",
    ];
    let mut s = SensorRun::new(&s1, port, &pcap, &state)
        .args(&args)
        .spawn("sensor-1", stack.path());
    s.wait_log("capture metered", Duration::from_secs(30));
    s.wait_log("cannot connect to collector", Duration::from_secs(30));
    assert!(
        s.terminate().expect("stopped").success(),
        "{}",
        s.log_text()
    );

    // Power-loss damage: a flipped byte inside the first record of the
    // first bulk segment, and the last segment torn mid-record.
    let mut segs: Vec<_> = std::fs::read_dir(state.join("buffer/bulk"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "twb"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 2, "expected several segments: {segs:?}");
    let first = &segs[0];
    let mut bytes = std::fs::read(first).unwrap();
    bytes[8 + 8 + 40] ^= 0xff;
    std::fs::write(first, bytes).unwrap();
    let last = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 10)
        .unwrap();

    // `buffer check` finds both and fails.
    let out = Command::new(bin("tidewatch-sensor"))
        .args(["buffer", "check", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check passed a damaged buffer:\n{text}"
    );
    assert!(err.contains("damaged record(s)"), "{err}");
    assert!(text.contains("corrupt 1"), "{text}");
    assert!(text.contains("torn tail"), "{text}");

    // The sensor starts, skips the damage (counted, logged) and delivers
    // every other batch exactly once.
    let _ingest = stack.ingest(pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    let empty = stack.path().join("empty.pcap");
    pcapgen::write_udp_flows(&empty, 0, 0, 1_700_000_000).unwrap();
    let mut s2 = SensorRun::new(&s1, port, &empty, &state)
        .args(&args)
        .spawn("sensor-2", stack.path());
    assert!(
        s2.wait(Duration::from_secs(120)).success(),
        "{}",
        s2.log_text()
    );
    assert!(
        s2.log_text()
            .contains("damaged records in the disk buffer were skipped"),
        "{}",
        s2.log_text()
    );
    let want = expected.flows - 2 * 20;
    let n = wait_until(Duration::from_secs(60), "the surviving flows", || {
        let n = stack.query_u64("SELECT count() FROM tidewatch.flows");
        (n == want).then_some(n)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stack.query_u64("SELECT count() FROM tidewatch.flows"), n);
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.flows_raw"),
        n,
        "a batch was stored twice"
    );
    // Afterwards the buffer is clean and empty.
    let after = buffer_cmd("check", &state);
    let total = total_line(&after);
    assert!(
        total.contains(" 0 batches not yet acked") && total.ends_with(" 0 damaged records"),
        "{after}"
    );
}

/// Resident set size of a process, in bytes.
fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[test]
fn a_day_long_outage_drains_at_the_throttled_rate_in_bounded_memory() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-blackout");
    let port = free_port();
    let mport = free_port();
    let state = stack.path().join("state");
    // A day of traffic: 300000 flows, one every 288 ms of capture time,
    // replayed at 2160x (24 h in 40 s) while the shore is unreachable.
    let pcap = stack.path().join("day.pcap");
    pcapgen::write_udp_flows_spaced(&pcap, 300_000, 2, 1_700_000_000, 288_000).unwrap();
    let expected = totals(&read_flows(&pcap));
    let rate = 1_000_000u64;
    let mut s = SensorRun::new(&s1, port, &pcap, &state)
        .args(&[
            "--replay-speed",
            "2160",
            "--no-compress",
            // Sized on uncompressed protobuf batches.
            "--batch-layout",
            "protobuf",
            "--batch-flows",
            "500",
            "--rate-limit",
            &rate.to_string(),
            "--metrics-listen",
            &format!("127.0.0.1:{mport}"),
        ])
        .spawn("sensor", stack.path());
    s.wait_log("capture metered", Duration::from_secs(180));
    let backlog = wait_until(Duration::from_secs(30), "the backlog in metrics", || {
        metric(mport, "tidewatch_sensor_buffer_bytes")
    });
    assert!(
        backlog > 12.0 * 1024.0 * 1024.0,
        "backlog of only {backlog} bytes"
    );
    assert!(
        metric(mport, "tidewatch_sensor_buffer_oldest_unacked_age_seconds").unwrap() > 30.0,
        "the backlog is not as old as the outage"
    );
    let before = rss(s.pid()).expect("sensor RSS");

    // The link is back: the backlog drains at the rate limit while the
    // sensor's memory stays where it was.
    let _ingest = stack.ingest(pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    let started = std::time::Instant::now();
    let mut peak = before;
    let mut first_ack = None;
    let mut samples = 0;
    while s.try_wait().is_none() {
        if let Some(r) = rss(s.pid()) {
            peak = peak.max(r);
            samples += 1;
        }
        if first_ack.is_none()
            && metric(mport, "tidewatch_sensor_uplink_batches_acked_total").is_some_and(|v| v > 0.0)
        {
            first_ack = Some(std::time::Instant::now());
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "drain did not finish:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s.wait(Duration::from_secs(1)).success(), "{}", s.log_text());
    assert!(samples >= 10, "the drain was too short to observe");
    let log = s.log_text();
    let sent: f64 = log
        .split("bytes_sent=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("bytes_sent in the sensor log");
    let t0 = first_ack.expect("an ack was observed");
    let secs = t0.elapsed().as_secs_f64();
    // The token bucket allows a one-second burst on top of the rate.
    assert!(
        sent <= rate as f64 * (secs + 2.0) * 1.05,
        "{sent} bytes in {secs:.1} s exceed the {rate} B/s limit"
    );
    println!(
        "outage drain: backlog {:.1} MiB, sensor RSS {:.1} MiB before, peak {:.1} MiB while draining; {sent} bytes in {secs:.1} s ({:.0} B/s, limit {rate})",
        backlog / 1048576.0,
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        sent / secs
    );
    assert!(
        peak <= before + 16 * 1024 * 1024,
        "RSS grew from {before} to {peak} bytes while draining {backlog} bytes"
    );
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    expect_flows(stack, &want);
}

/// SIGTERM in the middle of a replay, with every flow still open (the idle
/// timeout is far away): the sensor flushes them all into its disk buffer
/// before it exits, and the next start delivers them, each once.
#[test]
fn sigterm_flushes_open_flows_and_the_next_start_delivers_them() {
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let s1 = pki.sensor("s1", "mv-sigterm");
    let state = stack.path().join("state");
    // 3000 two-packet flows, 20 ms apart: a minute of capture time.
    let pcap = stack.path().join("minute.pcap");
    pcapgen::write_udp_flows_spaced(&pcap, 3000, 2, 1_700_000_000, 20_000).unwrap();
    let mut s = SensorRun::new(&s1, port, &pcap, &state)
        .args(&["--replay-speed", "1", "--idle-timeout", "600"])
        .spawn("sensor", stack.path());
    s.wait_log("upload stream open", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let st = s.terminate().expect("sensor stopped on SIGTERM");
    assert!(st.success(), "{}", s.log_text());
    let log = s.log_text();
    assert!(log.contains("SIGTERM received; flushing flows"), "{log}");
    // What was metered before the signal: every flow open until then.
    let metered = |key: &str| -> u64 {
        log.split("capture metered")
            .nth(1)
            .and_then(|r| r.split(&format!("{key}=")).nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in:\n{log}"))
    };
    let (frames, flows) = (metered("frames"), metered("flows"));
    assert!(
        flows > 0 && flows < 3000,
        "the signal did not land mid-replay: {flows} flows"
    );

    // The next start (nothing new to meter) delivers what the buffer holds.
    let _s2 = deliver_buffered(&s1, port, &state, "sensor-2", stack.path());
    let mut want = BTreeMap::new();
    want.insert(
        "s1".to_string(),
        Totals {
            flows,
            packets: frames,
            bytes: frames * 60,
        },
    );
    expect_flows(stack, &want);
}
