//! What each component did, as Prometheus metrics (`--metrics-listen`),
//! logged at shutdown too. One struct per component; names are
//! `tidewatch_ingest_*` and `tidewatch_sink_*`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tidewatch_proto::metrics::{
    serve, Counter, CounterVec, Gauge, Health, Histogram, Registry, LATENCY_BUCKETS,
};
use tracing::info;

/// Reasons a batch or connection is refused, pre-registered at zero so that
/// dashboards and alerts see every series from the start.
pub const REFUSAL_REASONS: &[&str] = &[
    "tls_handshake",
    "tls_timeout",
    "no_client_cert",
    "bad_certificate",
    "no_sensor_uri",
    "many_sensor_uris",
    "many_vessel_uris",
    "no_client_auth_eku",
    "bad_sensor_id",
    "revoked",
    "too_large",
    "too_many_records",
    "decompressed_too_large",
    "oversized_field",
    "bad_records",
    "bad_seq",
    "seq_mismatch",
    "identity_mismatch",
    "empty",
    "bad_encoding",
    "bad_compression",
    "bad_protobuf",
    "kafka_unavailable",
    "kafka_queue_full",
    "bad_grpc_message",
    "handshake_limit",
    "connection_limit",
    "sensor_connection_limit",
    "sensor_stream_limit",
];

pub struct IngestMetrics {
    pub registry: Arc<Registry>,
    pub batches_received: Arc<Counter>,
    pub batches_acked: Arc<Counter>,
    pub batches_acked_by_encoding: Arc<CounterVec>,
    pub records_acked: Arc<Counter>,
    pub flows_received: Arc<Counter>,
    pub flows_acked: Arc<Counter>,
    pub bad_records: Arc<Counter>,
    pub seq_regressions: Arc<Counter>,
    pub bytes_received: Arc<Counter>,
    pub refused: Arc<CounterVec>,
    pub kafka_produce: Arc<Histogram>,
    pub streams_open: Arc<Gauge>,
    pub link_table_bytes: Arc<Gauge>,
    pub connections: Arc<Counter>,
    pub connections_open: Arc<Gauge>,
    pub handshakes: Arc<Gauge>,
    pub connections_closed: Arc<CounterVec>,
    pub tls_reloads: Arc<Counter>,
    pub tls_reload_failures: Arc<Counter>,
    pub crl_revoked: Arc<Gauge>,
    pub renewals: Arc<CounterVec>,
}

/// Why ingest closed an open connection itself.
pub const CLOSE_REASONS: &[&str] = &["revoked", "max_age", "certificate_expired"];
/// How renewal requests ended.
pub const RENEWAL_RESULTS: &[&str] = &[
    "issued",
    "refused",
    "signer_unavailable",
    "disabled",
    "busy",
];

impl IngestMetrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        let m = IngestMetrics {
            batches_received: r.counter(
                "tidewatch_ingest_batches_received",
                "Batches received from sensors (acked or not).",
            ),
            batches_acked: r.counter(
                "tidewatch_ingest_batches_acked",
                "Batches written to Kafka and acked to the sensor.",
            ),
            batches_acked_by_encoding: r.counter_vec(
                "tidewatch_ingest_batches_acked_by_encoding",
                "Batches acked, by payload encoding: how far the fleet has moved to the columnar layout.",
                "encoding",
            ),
            records_acked: r.counter(
                "tidewatch_ingest_records_acked",
                "Records (flows, assets, status) in acked batches.",
            ),
            flows_received: r.counter(
                "tidewatch_ingest_flows_received",
                "Flow records in well-formed batches received.",
            ),
            flows_acked: r.counter(
                "tidewatch_ingest_flows_acked",
                "Flow records in acked batches.",
            ),
            bad_records: r.counter(
                "tidewatch_ingest_bad_records",
                "Flow records that cannot be stored (bad address length, port out of range) in acked batches: the sink dead-letters each alone and stores the rest.",
            ),
            seq_regressions: r.counter(
                "tidewatch_ingest_seq_regressions",
                "Batches whose seq is far (a year of microseconds) below the highest their sensor sent: a clock set back or a reinstalled sensor with a wrong clock.",
            ),
            bytes_received: r.counter(
                "tidewatch_ingest_received_bytes",
                "Batch payload bytes received (compressed, as on the wire).",
            ),
            refused: r.counter_vec(
                "tidewatch_ingest_refused",
                "Batches and connections refused, by reason.",
                "reason",
            ),
            kafka_produce: r.histogram(
                "tidewatch_ingest_kafka_produce_seconds",
                "Time from handing a batch to the Kafka producer to its delivery report.",
                LATENCY_BUCKETS,
            ),
            streams_open: r.gauge(
                "tidewatch_ingest_upload_streams",
                "Upload streams currently open.",
            ),
            link_table_bytes: r.gauge(
                "tidewatch_ingest_link_table_bytes",
                "Bytes of entries held in the link tables of open upload streams (at most --link-table-bytes each).",
            ),
            connections: r.counter(
                "tidewatch_ingest_connections_accepted",
                "TLS connections accepted with a valid sensor certificate.",
            ),
            connections_open: r.gauge(
                "tidewatch_ingest_connections_open",
                "Authenticated sensor connections open (--max-connections, --max-connections-per-sensor).",
            ),
            handshakes: r.gauge(
                "tidewatch_ingest_tls_handshakes",
                "TLS handshakes in progress (--max-handshakes).",
            ),
            connections_closed: r.counter_vec(
                "tidewatch_ingest_connections_closed",
                "Open connections ingest closed itself, by reason (revoked: the CRL now lists the certificate; max_age, certificate_expired: drained, the sensor reconnects and is checked again).",
                "reason",
            ),
            tls_reloads: r.counter(
                "tidewatch_ingest_tls_reloads",
                "Times the TLS material (CRL, client CA, server certificate) was reloaded after a change.",
            ),
            tls_reload_failures: r.counter(
                "tidewatch_ingest_tls_reload_failures",
                "Changed TLS material that could not be loaded (the previous stays in use; logged).",
            ),
            crl_revoked: r.gauge(
                "tidewatch_ingest_crl_revoked_certificates",
                "Certificates the CRL in use lists as revoked.",
            ),
            renewals: r.counter_vec(
                "tidewatch_ingest_certificate_renewals",
                "Certificate renewal requests from sensors, by result.",
                "result",
            ),
            registry: r,
        };
        for reason in REFUSAL_REASONS {
            m.refused.touch(reason);
        }
        for reason in CLOSE_REASONS {
            m.connections_closed.touch(reason);
        }
        for result in RENEWAL_RESULTS {
            m.renewals.touch(result);
        }
        for (_, encoding) in tidewatch_proto::codec::ENCODINGS {
            m.batches_acked_by_encoding.touch(encoding);
        }
        Arc::new(m)
    }

    pub fn log(&self, what: &'static str) {
        info!(
            batches_received = self.batches_received.get(),
            batches_acked = self.batches_acked.get(),
            records_acked = self.records_acked.get(),
            flows_acked = self.flows_acked.get(),
            "{what}"
        );
    }
}

pub struct DetectMetrics {
    pub registry: Arc<Registry>,
    pub kafka_records: Arc<Counter>,
    pub flows_checked: Arc<Counter>,
    pub envelopes_refused: Arc<Counter>,
    pub alerts: Arc<CounterVec>,
    pub suppressed: Arc<Counter>,
    pub indicators: Arc<Gauge>,
    pub assets_checked: Arc<Counter>,
    pub scheduled_runs: Arc<CounterVec>,
    pub hunts: Arc<Counter>,
}

/// The detector's streaming rules, pre-registered at zero.
pub const DETECT_RULES: &[&str] = &["intel-contact", "ot-write", "new-device", "zone-crossing"];

impl DetectMetrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        let m = DetectMetrics {
            kafka_records: r.counter("tidewatch_detect_kafka_records", "Kafka records read."),
            flows_checked: r.counter(
                "tidewatch_detect_flows_checked",
                "Flow records checked against the rules.",
            ),
            envelopes_refused: r.counter(
                "tidewatch_detect_envelopes_refused",
                "Records not signed by ingest, left unchecked (the sink dead-letters them).",
            ),
            alerts: r.counter_vec(
                "tidewatch_detect_alerts",
                "Alerts raised (stored and published), by rule; a re-raised alert counts again but is stored once.",
                "rule",
            ),
            suppressed: r.counter(
                "tidewatch_detect_suppressed",
                "Findings a suppression of the rules file held back (no alert).",
            ),
            indicators: r.gauge(
                "tidewatch_detect_intel_indicators",
                "Threat-intel indicators loaded.",
            ),
            assets_checked: r.counter(
                "tidewatch_detect_assets_checked",
                "Asset observations checked for new devices.",
            ),
            scheduled_runs: r.counter_vec(
                "tidewatch_detect_scheduled_runs",
                "Scheduled pack queries run over a window, by result (ok; failed: tried again 30 s later).",
                "result",
            ),
            hunts: r.counter(
                "tidewatch_detect_intel_hunts",
                "Intel loads hunted for over stored history.",
            ),
            registry: r,
        };
        for rule in DETECT_RULES {
            m.alerts.touch(rule);
        }
        for result in ["ok", "failed"] {
            m.scheduled_runs.touch(result);
        }
        Arc::new(m)
    }
}

pub struct DeliverMetrics {
    pub registry: Arc<Registry>,
    pub delivered: Arc<Counter>,
    pub failures: Arc<Counter>,
    pub already_delivered: Arc<Counter>,
    pub undecodable: Arc<Counter>,
}

impl DeliverMetrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        Arc::new(DeliverMetrics {
            delivered: r.counter(
                "tidewatch_deliver_alerts_delivered",
                "Alerts delivered (confirmed by the receiver) and recorded.",
            ),
            failures: r.counter(
                "tidewatch_deliver_failures",
                "Delivery attempts that failed (retried with backoff; nothing is dropped).",
            ),
            already_delivered: r.counter(
                "tidewatch_deliver_already_delivered",
                "Alerts read again (raised again, or after a restart) and not sent twice.",
            ),
            undecodable: r.counter(
                "tidewatch_deliver_undecodable",
                "Records of the alerts topic that are not alerts (skipped, logged).",
            ),
            registry: r,
        })
    }
}

pub struct SinkMetrics {
    pub registry: Arc<Registry>,
    pub kafka_records: Arc<Counter>,
    pub batches_stored: Arc<Counter>,
    pub rows_inserted: Arc<CounterVec>,
    pub duplicates_skipped: Arc<Counter>,
    pub dead_lettered: Arc<Counter>,
    pub envelopes_refused: Arc<Counter>,
    pub rows_refused: Arc<Counter>,
    pub insert_retries: Arc<Counter>,
    pub insert_seconds: Arc<Histogram>,
    pub commits: Arc<Counter>,
    /// Per partition: high watermark minus committed position.
    pub lag: std::sync::Mutex<std::collections::BTreeMap<i32, i64>>,
}

impl SinkMetrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        let m = Arc::new(SinkMetrics {
            kafka_records: r.counter("tidewatch_sink_kafka_records", "Kafka records consumed."),
            batches_stored: r.counter(
                "tidewatch_sink_batches_stored",
                "Batches stored in ClickHouse (rows and ledger) and committed.",
            ),
            rows_inserted: r.counter_vec(
                "tidewatch_sink_rows_inserted",
                "Rows inserted into ClickHouse, by table.",
                "table",
            ),
            duplicates_skipped: r.counter(
                "tidewatch_sink_duplicate_batches_skipped",
                "Batches skipped because the ledger already has them (sensor resends).",
            ),
            envelopes_refused: r.counter(
                "tidewatch_sink_envelopes_refused",
                "Kafka records whose signature is missing, unknown or wrong (not written by ingest): dead-lettered, never stored.",
            ),
            dead_lettered: r.counter(
                "tidewatch_sink_dead_lettered",
                "Kafka records sent to the dead-letter topic.",
            ),
            rows_refused: r.counter(
                "tidewatch_sink_rows_refused",
                "Rows ClickHouse refused for good (a data error), isolated by halving the insert and dead-lettered; the rest of their chunk is stored.",
            ),
            insert_retries: r.counter(
                "tidewatch_sink_insert_retries",
                "ClickHouse inserts retried after a failure.",
            ),
            insert_seconds: r.histogram(
                "tidewatch_sink_clickhouse_insert_seconds",
                "Time to insert one chunk into ClickHouse (all tables, successful attempts).",
                LATENCY_BUCKETS,
            ),
            commits: r.counter(
                "tidewatch_sink_offset_commits",
                "Kafka offset commits after a stored chunk.",
            ),
            lag: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            registry: r,
        });
        for t in crate::sink::rows::TABLES {
            m.rows_inserted.touch(t);
        }
        let weak = Arc::downgrade(&m);
        m.registry.gauge_fn(
            "tidewatch_sink_consumer_lag",
            "Kafka records not yet stored, per assigned partition (high watermark minus committed offset), refreshed every 5 s.",
            move || {
                weak.upgrade()
                    .map(|m| {
                        m.lag
                            .lock()
                            .expect("lag lock")
                            .iter()
                            .map(|(p, l)| (vec![("partition", p.to_string())], *l as f64))
                            .collect()
                    })
                    .unwrap_or_default()
            },
        );
        m
    }
}

/// Serves `registry` on `addr` (if given), healthy until `stop` is set.
pub async fn start_until(
    addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    stop: Stop,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let health: Health = Arc::new(move || {
        if stop.stopping() {
            Err("shutting down".into())
        } else {
            Ok(())
        }
    });
    start(addr, registry, health).await
}

/// A flag set on SIGTERM or SIGINT (logged with `then`, what happens next).
pub fn stop_on_signal(then: &'static str) -> Stop {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; {then}"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received; {then}"),
        }
        let _ = tx.send(true);
    });
    Stop(rx)
}

/// The stop flag of [`stop_on_signal`], as the services' loops wait on it.
#[derive(Clone)]
pub struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    pub fn stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once stopping.
    pub async fn wait(&self) {
        let _ = self.0.clone().wait_for(|v| *v).await;
    }

    /// Sleeps for `d`, or less when stopping.
    pub async fn pause(&self, d: std::time::Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wait() => {}
        }
    }
}

pub async fn start(
    addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    health: Health,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    let (local, task) = serve(addr, registry, health)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    info!(listen = %local, "metrics at http://{local}/metrics, health at /healthz");
    Ok(Some(task))
}
