//! `tidewatch-bench-queries`: time of each query of the analysts' pack over
//! a synthetic fleet loaded through the real pipeline (ingest, Kafka, sink,
//! ClickHouse on this machine).
//!
//! Options: `--vessels N` (20), `--days N` (14), `--scale N` (7: about 1500
//! flows per vessel-hour; 20 x 14 x 7 is about 10 M flows), `--runs N` (3),
//! `--hold SECS` (keep the loaded stack running afterwards, for exploring),
//! `--cluster` (the local 2 × 2 ClickHouse cluster instead of one server).
//! Each query runs over the last day against the whole baseline; the figure
//! is the best of the runs, measured at the ClickHouse HTTP interface (the
//! SQL is what `tidewatch-collector query NAME --print-sql` prints).
//! Run it with `deploy/local/bench-queries.sh` (release build).

use std::time::{Duration, Instant};

use tidewatch_collector::query::pack::PACK;
use tidewatch_tests::fleet::{self, Fleet, Spec};
use tidewatch_tests::*;

fn arg(name: &str, default: u64) -> u64 {
    number_arg(name, default)
}

fn main() {
    let spec = Spec {
        vessels: arg("--vessels", 20) as usize,
        days: arg("--days", 14) as u32,
        scale: arg("--scale", 7) as u32,
        ..Spec::default()
    };
    let runs = arg("--runs", 3).max(1);
    let cluster = std::env::args().any(|a| a == "--cluster");
    let stack = if cluster {
        Stack::start_cluster()
    } else {
        Stack::start()
    };
    stack.migrate();
    let pki = Pki::new(stack.path().join("pki"));
    let port = free_port();
    let _ingest = stack.ingest(&pki, port, &["--max-batch-records", "200000"]);
    let fleet = Fleet::new(spec.clone());
    let t0 = Instant::now();
    let want = fleet::load(&stack, &pki, port, &fleet);
    let flows: u64 = want.values().map(|t| t.flows).sum();
    println!(
        "tidewatch-bench-queries: {} vessels x {} days, {flows} flows uploaded in {:.1} s",
        spec.vessels,
        spec.days,
        t0.elapsed().as_secs_f64()
    );
    let _sink = stack.sink("sink", &["--max-rows", "200000"]);
    wait_until(
        Duration::from_secs(3600),
        "every flow in ClickHouse",
        || (stack.query_u64("SELECT count() FROM tidewatch.flows_raw") >= flows).then_some(()),
    );
    println!("loaded in {:.1} s", t0.elapsed().as_secs_f64());

    let since = fleet.truth.window_start_s;
    let until = since + 86_400;
    let measure = |label: &str| {
        println!("{label}:");
        for q in PACK.iter().map(|q| q.name) {
            let sql = run_ok(stack.collector().args([
                "query",
                q,
                "--since",
                &since.to_string(),
                "--until",
                &until.to_string(),
                "--baseline-days",
                "30",
                "--print-sql",
            ]));
            let sql = format!("{} FORMAT JSONEachRow", sql.trim().trim_end_matches(';'));
            let mut best = f64::MAX;
            let mut rows = 0;
            for _ in 0..runs {
                let t = Instant::now();
                let out = stack
                    .query_tidewatch(&sql)
                    .unwrap_or_else(|e| panic!("{q}: {e}"));
                best = best.min(t.elapsed().as_secs_f64());
                rows = out.lines().count();
            }
            println!("  {q:<17} {:>7.3} s  ({rows} rows)", best);
        }
    };
    // On a cluster, the parts of node 1 (shard 1) and merges on every
    // shard.
    let (table, on) = if cluster {
        ("flows_raw_local", " ON CLUSTER tidewatch")
    } else {
        ("flows_raw", "")
    };
    let parts_sql = format!(
        "SELECT count() FROM system.parts WHERE database = 'tidewatch' AND table = '{table}' AND active"
    );
    let parts = stack.query_u64(&parts_sql);
    measure(&format!("as loaded ({parts} active parts of {table})"));
    for p in stack
        .query(&format!("SELECT DISTINCT partition FROM system.parts WHERE database = 'tidewatch' AND table = '{table}' AND active"))
        .unwrap()
        .lines()
    {
        stack
            .query(&format!("OPTIMIZE TABLE tidewatch.{table}{on} PARTITION {p} FINAL"))
            .unwrap();
    }
    let parts = stack.query_u64(&parts_sql);
    measure(&format!("after merges ({parts} active parts)"));
    let hold = arg("--hold", 0);
    if hold > 0 {
        println!(
            "holding the stack for {hold} s: clickhouse-client --port {}",
            stack
                .query("SELECT tcpPort()")
                .map(|p| p.trim().to_string())
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(hold));
    }
}
