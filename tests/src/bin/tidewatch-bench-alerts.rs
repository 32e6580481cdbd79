//! `tidewatch-bench-alerts`: how fast an alarm reaches the SOC, and how many
//! flows the detector checks per second on one core.
//!
//! **Latency.** A sensor captures live on the loopback interface (filter
//! `tcp port 502`); this program opens Modbus/TCP connections to a server
//! of its own on 127.0.0.1:502, each from a fresh address, writes one
//! register and closes. Each is an `ot-write` alert (no engineering station
//! is known) that travels sensor -> ingest -> Kafka -> detector -> alerts
//! topic -> deliver -> rsyslog (real daemon, its reception time). The
//! latency is from the connection's last packet (its close, as seen here)
//! to rsyslog's reception of its alert; with the sensor's default
//! `--flush-interval` (10 s) and with `--flush-interval 1`. A flow is
//! emitted 2 s after its close (the sensor lingers for trailing packets).
//!
//! **Throughput.** The synthetic fleet (every rule's inputs: zones and
//! conduits, assets, writes, 10,000 indicators) goes through ingest into
//! the topic; then a detector pinned to one core (taskset) reads it all:
//! flows checked per second.
//!
//! Options: `--writes N` (15 per setting), `--scale N` (30: about 1.7 M
//! flows in the fleet). Needs root (live capture, port 502). Run it with
//! `deploy/local/bench-alerts.sh` (release build).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use tidewatch_tests::fleet::{self, Fleet, Spec};
use tidewatch_tests::sensor::SensorRun;
use tidewatch_tests::syslog::Rsyslog;
use tidewatch_tests::*;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A Modbus/TCP server that answers every request with its echo (the
/// answer to a write single register), until the client closes.
fn modbus_server() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:502").expect("bind 127.0.0.1:502 (run as root)");
    let server = l.try_clone().unwrap();
    std::thread::spawn(move || {
        for conn in server.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut req = [0u8; 12];
                if c.read_exact(&mut req).is_ok() {
                    let _ = c.write_all(&req);
                }
                let mut rest = Vec::new();
                let _ = c.read_to_end(&mut rest);
            });
        }
    });
    l
}

/// One write single register from `from`; the time of its last packet.
fn write_register(from: Ipv4Addr, tid: u16) -> f64 {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&SocketAddr::from(([127, 0, 0, 1], 502)).into())
        .unwrap();
    let mut c: TcpStream = s.into();
    let [t0, t1] = tid.to_be_bytes();
    // MBAP (transaction, protocol 0, length 6, unit 1), function 6,
    // register 40, value 1234.
    let req = [t0, t1, 0, 0, 0, 6, 1, 6, 0, 40, 0x04, 0xd2];
    c.write_all(&req).unwrap();
    let mut resp = [0u8; 12];
    c.read_exact(&mut resp).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    unix_now()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let writes = number_arg("--writes", 15) as u8;
    let scale = number_arg("--scale", 30) as u32;
    let stack = Stack::start();
    stack.migrate();
    let pki = Pki::new(stack.path().join("pki"));
    let port = free_port();
    let _ingest = stack.ingest(&pki, port, &["--max-batch-records", "200000"]);
    let _sink = stack.sink("sink", &[]);
    let rules = stack.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n  ot-write:\n    learning_secs: 0\nscheduled: []\n",
    )
    .unwrap();
    let mut det = Proc::spawn(
        "detect",
        stack.path(),
        stack
            .collector()
            .args(["detect", "--refresh-secs", "5", "--rules"])
            .arg(&rules),
    );
    det.wait_log("detector started", Duration::from_secs(60));
    let mut rsyslog = Rsyslog::start(&stack.path().join("rsyslog"));
    let mut deliver = Proc::spawn(
        "deliver",
        stack.path(),
        stack.collector().args([
            "deliver",
            "--name",
            "soc",
            "--syslog",
            &format!("127.0.0.1:{}", rsyslog.port),
        ]),
    );
    deliver.wait_log("delivery started", Duration::from_secs(60));
    let _server = modbus_server();
    let cert = pki.sensor("bench-1", "mv-bench");

    println!("tidewatch-bench-alerts: flow's last packet -> alert received by rsyslog (ot-write, {writes} per setting)");
    for (round, flush) in [(1u8, None), (2, Some("1"))] {
        let state = stack.path().join(format!("sensor-{round}"));
        let mut run =
            SensorRun::live(&cert, port, "lo", &state).args(&["--filter", "tcp port 502"]);
        if let Some(f) = flush {
            run = run.args(&["--flush-interval", f]);
        }
        let mut sensor = run.spawn(&format!("sensor-{round}"), stack.path());
        sensor.wait_log("live capture started", Duration::from_secs(30));
        let mut last: BTreeMap<String, f64> = BTreeMap::new();
        for i in 0..writes {
            let from = Ipv4Addr::new(127, 0, round, 10 + i);
            last.insert(from.to_string(), write_register(from, i as u16));
            // Spread over the flush cycle.
            std::thread::sleep(Duration::from_millis(2_000 + 379 * (i as u64 % 7)));
        }
        let got = wait_until(Duration::from_secs(120), "every alert at rsyslog", || {
            let mut got = BTreeMap::new();
            for (at, msg) in rsyslog.arrivals() {
                let Some((_, body)) = msg.split_once("] ") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
                    continue;
                };
                if let Some(t) = v["subject"].as_str().and_then(|s| last.get(s)) {
                    got.insert(v["subject"].as_str().unwrap().to_string(), at - t);
                }
            }
            (got.len() == last.len()).then_some(got)
        });
        let mut lat: Vec<f64> = got.into_values().collect();
        lat.sort_by(f64::total_cmp);
        println!(
            "  sensor --flush-interval {:>2} s: latency min {:.2} s, median {:.2} s, p95 {:.2} s, max {:.2} s ({} alerts)",
            flush.unwrap_or("10"),
            lat[0],
            percentile(&lat, 0.5),
            percentile(&lat, 0.95),
            lat[lat.len() - 1],
            lat.len()
        );
        sensor.terminate();
    }
    deliver.terminate();
    det.terminate();
    rsyslog.kill();

    // Throughput: the fleet into the topic, then one detector on one core.
    let fleet = Fleet::new(Spec {
        scale,
        ..Spec::default()
    });
    let t0 = Instant::now();
    let want = fleet::load(&stack, &pki, port, &fleet);
    let flows: u64 = want.values().map(|t| t.flows).sum();
    println!(
        "detector throughput: {flows} flows of the synthetic fleet uploaded in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let feed = stack.path().join("indicators.txt");
    let list: String = (0..10_000u32)
        .map(|i| {
            let [_, b, c, d] = i.to_be_bytes();
            format!("100.{b}.{c}.{d}, bench\n")
        })
        .collect();
    std::fs::write(&feed, list).unwrap();
    run_ok(stack.collector().args(["intel", "load"]).arg(&feed));
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let bench_rules = stack.path().join("bench-rules.yaml");
    std::fs::write(&bench_rules, "scheduled: []\n").unwrap();
    let c = stack.collector();
    let mut pinned = Command::new("taskset");
    pinned
        .args(["-c", "0"])
        .arg(c.get_program())
        .args(c.get_args())
        .args([
            "detect",
            "--group",
            "bench",
            "--max-records",
            "1000",
            "--rules",
        ])
        .arg(&bench_rules)
        .args(["--metrics-listen", &listen]);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => pinned.env(k, v),
            None => pinned.env_remove(k),
        };
    }
    let mut det = Proc::spawn("detect-bench", stack.path(), &mut pinned);
    det.wait_log("detector started", Duration::from_secs(60));
    let checked = || http::metric(mport, "tidewatch_detect_flows_checked_total").unwrap_or(0.0);
    wait_until(Duration::from_secs(60), "the first flows checked", || {
        (checked() > 0.0).then_some(())
    });
    let (t1, f1) = (Instant::now(), checked());
    wait_until(Duration::from_secs(3600), "every flow checked", || {
        (checked() >= flows as f64).then_some(())
    });
    let secs = t1.elapsed().as_secs_f64();
    println!(
        "  detector on one core: {:.0} flows/s ({:.0} flows in {secs:.1} s; every streaming rule on, 10000 indicators, zones and conduits for every sensor)",
        (flows as f64 - f1) / secs,
        flows as f64 - f1
    );
    det.terminate();
}
