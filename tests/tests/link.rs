//! Intermittent links: the sensor uploads through a link emulator that is
//! cut (reset) and blackholed (silent) a hundred times at random during a
//! long replay; ClickHouse finally holds every flow exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use tidewatch_tests::linkemu::LinkEmu;
use tidewatch_tests::*;

#[test]
fn cuts_and_blackholes_during_a_replay_lose_and_duplicate_nothing() {
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let s1 = pki.sensor("s1", "mv-vsat");
    let link = LinkEmu::start(port);

    // 60000 flows over 60 s of capture time, replayed at 0.5x with a short
    // idle timeout, so batches keep coming for about two minutes.
    let pcap = stack.path().join("long.pcap");
    pcapgen::write_udp_flows(&pcap, 60_000, 2, 1_700_000_000).unwrap();
    let expected = totals(&read_flows_with(&pcap, &["--idle-timeout", "0.5"]));
    let mut s = SensorRun::new(&s1, link.port, &pcap, &stack.path().join("state"))
        .args(&[
            "--idle-timeout",
            "0.5",
            "--replay-speed",
            "0.5",
            "--batch-flows",
            "100",
            "--window",
            "4",
            "--ack-timeout",
            "2",
            "--keepalive-secs",
            "1",
        ])
        .spawn("sensor", stack.path());
    s.wait_log("upload stream open", Duration::from_secs(30));
    // 100 cuts at pseudo-random moments, half resets and half silent
    // blackholes of random length (a fixed seed keeps it reproducible).
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut resets, mut holes) = (0, 0);
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50 + next(450)));
        if next(2) == 0 {
            link.cut_reset();
            resets += 1;
        } else {
            link.blackhole(true);
            std::thread::sleep(Duration::from_millis(200 + next(2300)));
            link.blackhole(false);
            holes += 1;
        }
    }
    assert_eq!(resets + holes, 100);
    assert!(
        resets >= 30 && holes >= 30,
        "{resets} resets, {holes} blackholes"
    );
    assert!(
        s.try_wait().is_none(),
        "the replay ended before the last cut; the cuts did not all land mid-stream"
    );
    assert!(
        s.wait(Duration::from_secs(240)).success(),
        "{}",
        s.log_text()
    );
    let log = s.log_text();
    // A cut that lands while the sensor is backing off after the previous
    // one interrupts nothing; most land on a live stream.
    let interrupted = log.matches("upload stream interrupted").count();
    assert!(
        interrupted >= 30,
        "only {interrupted} interruptions from 100 cuts:\n{log}"
    );
    assert!(
        link.accepted() >= 30,
        "only {} connections through the link",
        link.accepted()
    );
    let mut want = BTreeMap::new();
    want.insert("s1".to_string(), expected);
    expect_flows(stack, &want);
}

#[test]
fn rate_limit_keeps_the_upload_under_the_configured_rate() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-narrow");
    let port = free_port();
    let _ingest = stack.ingest(pki, port, &[]);
    let link = LinkEmu::start(port);
    let pcap = stack.path().join("flows.pcap");
    pcapgen::write_udp_flows(&pcap, 3000, 2, 1_700_000_000).unwrap();
    let rate: u64 = 5_000;
    let started = std::time::Instant::now();
    let mut s = SensorRun::new(&s1, link.port, &pcap, &stack.path().join("state"))
        .args(&["--batch-flows", "100", "--rate-limit", &rate.to_string()])
        .spawn("sensor", stack.path());
    assert!(
        s.wait(Duration::from_secs(120)).success(),
        "{}",
        s.log_text()
    );
    let elapsed = started.elapsed().as_secs_f64();
    let log = s.log_text();
    let sent: u64 = log
        .split("bytes_sent=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("bytes_sent in the sensor log");
    assert!(
        sent > 3 * rate,
        "too little data ({sent} bytes) to show a limit"
    );
    // Lower bound on time (pacing sleeps): the payload beyond the first
    // second's burst needs sent/rate - 1 seconds.
    assert!(
        elapsed >= sent as f64 / rate as f64 - 1.0,
        "{sent} bytes in {elapsed:.1} s at {rate} B/s"
    );
    // Measured outside the sensor, by the link: the worst one-second window
    // holds at most a second's refill plus one burst (a second's worth or
    // one batch, whichever is larger), plus the TLS/HTTP/2 framing and the
    // handshake. A limiter that let everything through at once would put
    // all `sent` bytes in one window, which this bound excludes.
    let largest_batch = 4_096.0; // 100 flows, zstd: well under this
    let bound = rate as f64 + (rate as f64).max(largest_batch) + 0.05 * sent as f64 + 8_192.0;
    assert!(
        (sent as f64) > bound,
        "too little data ({sent} bytes) to tell a limit from none"
    );
    let worst = link.max_up_in(Duration::from_secs(1)) as f64;
    assert!(
        worst <= bound,
        "{worst} bytes crossed the link within one second (limit {rate} B/s)"
    );
    // And the limit is not much slower than asked: the upload drains at
    // least at half the rate over its span on the link.
    let span = link.up_span().as_secs_f64();
    assert!(
        sent as f64 / span >= rate as f64 / 2.0,
        "{sent} bytes over {span:.1} s: slower than half of {rate} B/s"
    );
}
