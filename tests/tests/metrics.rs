//! Prometheus endpoints of the sensor, ingest and sink, scraped while real
//! traffic flows: the counters start at zero, move with the traffic and end
//! equal to what was sent and stored.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tidewatch_proto::v1::AckStatus;
use tidewatch_tests::grpc::{request, upload, ClientCert};
use tidewatch_tests::*;

/// GET over plain HTTP/1.1; returns (status line, body).
fn get(port: u16, path: &str) -> Result<(String, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("no header end")?;
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

fn scrape(port: u16) -> String {
    let (status, body) = get(port, "/metrics").unwrap_or_else(|e| panic!("scrape :{port}: {e}"));
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    check_exposition(&body);
    body
}

/// Every sample belongs to a family announced with HELP and TYPE, counters
/// end in `_total`, and values parse.
fn check_exposition(text: &str) {
    let mut typed: Vec<(String, String)> = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').expect("TYPE line");
            if t == "counter" {
                assert!(n.ends_with("_total"), "counter {n} lacks _total");
            }
            assert!(
                n.starts_with("tidewatch_"),
                "{n} outside the tidewatch_ namespace"
            );
            typed.push((n.to_string(), t.to_string()));
        } else if !l.starts_with('#') && !l.is_empty() {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            let name = series.split('{').next().unwrap();
            assert!(
                typed.iter().any(|(n, t)| name == n
                    || (t == "histogram"
                        && [
                            format!("{n}_bucket"),
                            format!("{n}_sum"),
                            format!("{n}_count")
                        ]
                        .iter()
                        .any(|x| x == name))),
                "sample {name} without TYPE"
            );
            assert!(
                value == "+Inf" || value.parse::<f64>().is_ok(),
                "bad value in {l:?}"
            );
        }
    }
}

/// The metric families the README's "Metrics" table lists for `component`
/// (`ingest`, `sink`, `sensor`), full names without labels.
fn documented(component: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with(&format!("| {component} | `tidewatch_")))
        .unwrap_or_else(|| panic!("no README metrics row for {component}"));
    let prefix = format!("tidewatch_{component}");
    let names: Vec<String> = row
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|n| {
            let n = n.split('{').next().unwrap();
            if n.starts_with('_') {
                format!("{prefix}{n}")
            } else {
                n.to_string()
            }
        })
        .collect();
    assert!(names.len() >= 8, "{component}: {names:?}");
    names
}

/// Every family the README documents for `component` is served.
fn serves_documented(text: &str, component: &str) {
    for n in documented(component) {
        assert!(
            text.contains(&format!("# TYPE {n} ")),
            "{n} is in the README but not served by {component}:\n{text}"
        );
    }
}

/// Value of one series (`name` or `name{labels}` exactly as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("number"))
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

/// Sum of every series of a family (all label values).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

#[test]
fn metrics_of_sensor_ingest_and_sink_follow_the_traffic() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("m1", "mv-metrics");
    let pcap = pcaps().join("bacnet/bacnet_example.pcap");
    let want = totals(&read_flows(&pcap));
    assert!(want.flows > 10, "capture too small for the test");

    let (ingest_port, ingest_mport, sink_mport, sensor_mport) =
        (free_port(), free_port(), free_port(), free_port());
    let sink_m = sink_mport.to_string();
    let mut sink = stack.sink(
        "sink",
        &["--metrics-listen", &format!("127.0.0.1:{sink_m}")],
    );
    let s = scrape(sink_mport);
    assert_eq!(
        must(
            &s,
            "tidewatch_sink_rows_inserted_total{table=\"flows_raw\"}"
        ),
        0.0
    );
    assert_eq!(
        must(&s, "tidewatch_sink_clickhouse_insert_seconds_count"),
        0.0
    );
    assert_eq!(get(sink_mport, "/healthz").unwrap().0, "HTTP/1.1 200 OK");

    // The sensor starts while the collector is away: everything waits in
    // its disk buffer and the metrics say so.
    let state = stack.path().join("state-m1");
    let mut sensor = SensorRun::new(&s1, ingest_port, &pcap, &state)
        .args(&[
            "--batch-flows",
            "10",
            "--metrics-listen",
            &format!("127.0.0.1:{sensor_mport}"),
        ])
        .spawn("sensor-m1", stack.path());
    let s = wait_until(Duration::from_secs(60), "sensor backlog in metrics", || {
        let s = get(sensor_mport, "/metrics").ok()?.1;
        (sum(&s, "tidewatch_sensor_buffer_pending_flows") == want.flows as f64
            && value(&s, "tidewatch_sensor_uplink_reconnects_total")? >= 1.0
            && value(&s, "tidewatch_sensor_buffer_oldest_unacked_age_seconds")? >= 1.0)
            .then_some(s)
    });
    check_exposition(&s);
    serves_documented(&s, "sensor");
    assert_eq!(
        must(&s, "tidewatch_sensor_flow_records_total"),
        want.flows as f64
    );
    assert_eq!(must(&s, "tidewatch_sensor_uplink_connected"), 0.0);
    assert_eq!(must(&s, "tidewatch_sensor_uplink_batches_acked_total"), 0.0);
    assert!(must(&s, "tidewatch_sensor_capture_frames_total") >= want.packets as f64);
    assert!(must(&s, "tidewatch_sensor_buffer_bytes") > 0.0);
    assert_eq!(
        must(&s, "tidewatch_sensor_buffer_limit_bytes"),
        256.0 * 1024.0 * 1024.0
    );
    assert_eq!(sum(&s, "tidewatch_sensor_dropped_flows_total"), 0.0);
    assert_eq!(
        must(
            &s,
            "tidewatch_sensor_dropped_flows_total{cause=\"buffer_full\",class=\"bulk\"}"
        ),
        0.0
    );
    // BACnet writes travel in their own class.
    assert!(
        must(
            &s,
            "tidewatch_sensor_buffer_pending_flows{class=\"ot-write\"}"
        ) > 0.0
    );
    assert_eq!(must(&s, "tidewatch_sensor_uplink_budget_bytes"), 0.0);
    let batches = sum(&s, "tidewatch_sensor_buffer_pending_batches");
    assert!(batches >= (want.flows / 10) as f64, "{batches} batches");
    assert!(must(&s, "tidewatch_sensor_uplink_budget_used_bytes") == 0.0);

    // The collector arrives; ingest counters start at zero.
    let _ingest = stack.ingest(
        pki,
        ingest_port,
        &["--metrics-listen", &format!("127.0.0.1:{ingest_mport}")],
    );
    let st = sensor.wait(Duration::from_secs(120));
    assert!(st.success(), "sensor failed:\n{}", sensor.log_text());

    let s = wait_until(Duration::from_secs(30), "ingest counters", || {
        let s = get(ingest_mport, "/metrics").ok()?.1;
        (value(&s, "tidewatch_ingest_batches_acked_total")? == batches).then_some(s)
    });
    check_exposition(&s);
    assert_eq!(
        must(&s, "tidewatch_ingest_flows_acked_total"),
        want.flows as f64
    );
    assert_eq!(must(&s, "tidewatch_ingest_batches_received_total"), batches);
    assert_eq!(
        must(&s, "tidewatch_ingest_kafka_produce_seconds_count"),
        batches
    );
    assert_eq!(
        must(
            &s,
            "tidewatch_ingest_kafka_produce_seconds_bucket{le=\"+Inf\"}"
        ),
        batches
    );
    assert!(must(&s, "tidewatch_ingest_received_bytes_total") > 0.0);
    assert!(must(&s, "tidewatch_ingest_connections_accepted_total") >= 1.0);
    assert_eq!(sum(&s, "tidewatch_ingest_refused_total"), 0.0);
    assert_eq!(
        must(&s, "tidewatch_ingest_refused_total{reason=\"bad_seq\"}"),
        0.0
    );
    assert_eq!(get(ingest_mport, "/healthz").unwrap().0, "HTTP/1.1 200 OK");

    // A refused batch is counted under its reason.
    let acks = upload(
        ingest_port,
        &s1.ca,
        Some(ClientCert::of(&s1)),
        vec![request(0, 1, "")],
    )
    .unwrap();
    assert_eq!(acks[0].status, AckStatus::Malformed as i32);
    let s = scrape(ingest_mport);
    serves_documented(&s, "ingest");
    assert_eq!(
        must(&s, "tidewatch_ingest_refused_total{reason=\"bad_seq\"}"),
        1.0
    );
    assert_eq!(sum(&s, "tidewatch_ingest_refused_total"), 1.0);
    assert_eq!(must(&s, "tidewatch_ingest_batches_acked_total"), batches);
    // The sensor seals in the default, columnar layout.
    let by = |e: &str| {
        must(
            &s,
            &format!("tidewatch_ingest_batches_acked_by_encoding_total{{encoding=\"{e}\"}}"),
        )
    };
    // Columns, linked to the stream's table once it is open (a batch
    // queued before that goes self-contained).
    assert_eq!(by("columns_zstd") + by("columns_linked_zstd"), batches);
    assert!(by("columns_linked_zstd") > 0.0);
    assert_eq!(by("protobuf_zstd"), 0.0);
    // Once the streams are closed, their tables are given back.
    wait_until(Duration::from_secs(30), "link tables given back", || {
        let s = get(ingest_mport, "/metrics").ok()?.1;
        (value(&s, "tidewatch_ingest_link_table_bytes")? == 0.0).then_some(())
    });

    // The sink stores everything and its lag comes back to zero.
    let s = wait_until(Duration::from_secs(60), "sink counters", || {
        let s = get(sink_mport, "/metrics").ok()?.1;
        (value(
            &s,
            "tidewatch_sink_rows_inserted_total{table=\"flows_raw\"}",
        )? == want.flows as f64
            && value(&s, "tidewatch_sink_batches_stored_total")? == batches
            && s.contains("tidewatch_sink_consumer_lag{")
            && sum(&s, "tidewatch_sink_consumer_lag") == 0.0)
            .then_some(s)
    });
    check_exposition(&s);
    serves_documented(&s, "sink");
    assert_eq!(must(&s, "tidewatch_sink_kafka_records_total"), batches);
    assert_eq!(
        must(&s, "tidewatch_sink_rows_inserted_total{table=\"batches\"}"),
        batches
    );
    assert!(must(&s, "tidewatch_sink_clickhouse_insert_seconds_count") >= 1.0);
    assert!(must(&s, "tidewatch_sink_offset_commits_total") >= 1.0);
    assert_eq!(must(&s, "tidewatch_sink_dead_lettered_total"), 0.0);
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.flows"),
        want.flows
    );
    assert_eq!(
        get(sink_mport, "/nope").unwrap().0,
        "HTTP/1.1 404 Not Found"
    );

    // A sensor that runs for a while reports its status periodically, not
    // only at the end: 145 s of IEC-104 replayed at 30x with a 1 s interval.
    let s2 = pki.sensor("m2", "mv-metrics");
    let pcap2 = pcaps().join("iec104/iec104.pcap");
    let want2 = totals(&read_flows(&pcap2));
    let mut sensor2 = SensorRun::new(&s2, ingest_port, &pcap2, &stack.path().join("state-m2"))
        .args(&[
            "--replay-speed",
            "30",
            "--status-interval",
            "1",
            "--flush-interval",
            "0.5",
        ])
        .spawn("sensor-m2", stack.path());
    let st = sensor2.wait(Duration::from_secs(120));
    assert!(st.success(), "sensor failed:\n{}", sensor2.log_text());
    let statuses = wait_until(Duration::from_secs(60), "periodic status rows", || {
        let out = stack
            .query(
                "SELECT capture_packets FROM tidewatch.sensor_status \
                 WHERE sensor_id = 'm2' ORDER BY observed_us DESC",
            )
            .ok()?;
        let v: Vec<u64> = out.lines().map(|l| l.parse().unwrap()).collect();
        (v.len() >= 4 && v[0] == want2.packets).then_some(v)
    });
    assert!(
        statuses.windows(2).all(|w| w[0] >= w[1]),
        "capture counters went backwards: {statuses:?}"
    );
    assert!(statuses.last().unwrap() < &want2.packets, "{statuses:?}");
    let f2 = wait_until(Duration::from_secs(60), "m2 flows", || {
        let n = stack.query_u64("SELECT count() FROM tidewatch.flows WHERE sensor_id = 'm2'");
        (n == want2.flows).then_some(n)
    });
    assert_eq!(f2, want2.flows);
    sink.terminate();
}
