//! `tidewatch-collector ingest`: the mTLS gRPC endpoint sensors upload to.
//!
//! Lifecycle: load TLS material and check that Kafka and the topic answer,
//! then serve. On SIGTERM/SIGINT the health service turns NOT_SERVING, every
//! upload stream stops reading new batches, finishes the ones already being
//! written to Kafka and sends their acks, then ends with UNAVAILABLE so the
//! sensor reconnects elsewhere; the producer is flushed and the process exits.

pub mod service;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::producer::Producer;
use tidewatch_proto::codec::DecodeLimits;
use tidewatch_proto::v1::uplink_server::UplinkServer;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::envelope::SigningKey;
use crate::identity::IdentityPolicy;
use crate::kafka::KafkaArgs;
use crate::metrics::IngestMetrics;
use service::{IngestService, Limits};
use tidewatch_proto::v1::signer_client::SignerClient;

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Address to listen on for sensors.
    #[arg(long, env = "TIDEWATCH_LISTEN", default_value = "0.0.0.0:4443")]
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    #[arg(long, env = "TIDEWATCH_TLS_CERT", value_name = "PEM")]
    pub tls_cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, env = "TIDEWATCH_TLS_KEY", value_name = "PEM")]
    pub tls_key: PathBuf,
    /// Fleet CA (PEM); sensors must present a certificate it signed.
    #[arg(long, env = "TIDEWATCH_CLIENT_CA", value_name = "PEM")]
    pub client_ca: PathBuf,
    /// Certificate revocation list (PEM) of the fleet CA. Reloaded when it
    /// changes (as the other TLS files): open connections of a newly
    /// revoked sensor are closed within seconds.
    #[arg(long, env = "TIDEWATCH_CRL", value_name = "PEM")]
    pub crl: Option<PathBuf>,
    /// Seconds between checks of the TLS files (CRL, client CA, server
    /// certificate and key) for a change.
    #[arg(long, default_value_t = 2)]
    pub tls_reload_secs: u64,
    /// Seconds a connection may live: then it drains (no new batch, acks
    /// sent, stream ended) and the sensor reconnects, going through the
    /// certificate checks again. A connection also drains when its
    /// certificate expires.
    #[arg(long, default_value_t = 3600)]
    pub max_connection_age_secs: u64,
    /// Seconds a draining connection has before it is closed.
    #[arg(long, default_value_t = 30)]
    pub drain_grace_secs: u64,
    /// Also accept certificates without a urn:tidewatch:sensor: SAN URI,
    /// reading the sensor id from the subject CN and the vessel from the OU
    /// (certificates made before the URI convention). Off: any certificate
    /// the CA signed would pass as a sensor.
    #[arg(long)]
    pub allow_legacy_cn_identity: bool,
    /// Ed25519 private key (PKCS#8 PEM) ingest signs every Kafka record
    /// with; the sinks store only what it signed (`tidewatch-collector
    /// envelope-key` makes a pair).
    #[arg(long, env = "TIDEWATCH_ENVELOPE_SIGNING_KEY", value_name = "PEM")]
    pub envelope_signing_key: PathBuf,
    /// The signer renewing sensor certificates, e.g. https://tidewatch-signer:4444
    /// (default: none; sensors asking to renew are told so).
    #[arg(long, env = "TIDEWATCH_SIGNER", value_name = "URL", requires_all = ["signer_ca", "signer_cert", "signer_key"])]
    pub signer: Option<String>,
    /// CA of the signer's server certificate (PEM).
    #[arg(long, env = "TIDEWATCH_SIGNER_CA", value_name = "PEM")]
    pub signer_ca: Option<PathBuf>,
    /// Ingest's client certificate towards the signer (`pki issue-ingest`).
    #[arg(long, env = "TIDEWATCH_SIGNER_CERT", value_name = "PEM")]
    pub signer_cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, env = "TIDEWATCH_SIGNER_KEY", value_name = "PEM")]
    pub signer_key: Option<PathBuf>,
    /// Largest batch payload accepted, in bytes. Keep it below the Kafka
    /// topic's max.message.bytes.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_batch_bytes: usize,
    /// Largest number of records in one batch (flows, assets, statuses).
    /// Nested lists and strings in a record are capped at the sensor's own
    /// limits; a batch over any of them is refused before it is decoded.
    #[arg(long, default_value_t = DecodeLimits::INGEST.max_records)]
    pub max_batch_records: usize,
    /// Largest batch payload after decompression, in bytes.
    #[arg(long, default_value_t = DecodeLimits::INGEST.max_decoded_bytes)]
    pub max_decoded_bytes: usize,
    /// Milliseconds a batch may wait for Kafka before the sensor is told to retry.
    #[arg(long, default_value_t = 30_000)]
    pub kafka_timeout_ms: u64,
    /// Bytes of batches waiting to be written to Kafka, in MiB (librdkafka's
    /// queue); a batch that finds it full is refused as retryable.
    #[arg(long, default_value_t = 64)]
    pub kafka_queue_mib: u32,
    /// TLS handshakes in progress at once; a connection beyond it is closed
    /// at once (the sensor reconnects with backoff).
    #[arg(long, default_value_t = 256)]
    pub max_handshakes: usize,
    /// Seconds a TLS handshake may take (a peer that sends nothing is
    /// dropped after it).
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// Authenticated connections open at once, over all sensors.
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Connections one sensor certificate may hold open at once (a sensor
    /// uses one; those of a dead link linger until keepalive closes them).
    #[arg(long, default_value_t = 8)]
    pub max_connections_per_sensor: usize,
    /// Upload streams one sensor certificate may hold open at once (over
    /// its connections); one beyond it is refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 8)]
    pub max_streams_per_sensor: usize,
    /// Bytes of strings and addresses ingest keeps per upload stream so
    /// that later batches of the stream refer to them instead of spelling
    /// them again (the link table; fewer bytes on the sensors' links). The
    /// memory it takes is at most this per open stream; 0 turns it off
    /// (sensors then send self-contained batches).
    #[arg(long, default_value_t = tidewatch_proto::link::DEFAULT_BYTES, value_name = "BYTES")]
    pub link_table_bytes: usize,
    /// HTTP/2 streams per connection (any RPC, health checks included).
    #[arg(long, default_value_t = 16)]
    pub max_streams_per_connection: u32,
    /// Serve Prometheus metrics (/metrics) and readiness (/healthz) over
    /// plain HTTP on this address, e.g. 0.0.0.0:9100 (default: off).
    #[arg(long, env = "TIDEWATCH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve the gRPC health service (grpc.health.v1) without TLS on
    /// this address, for Kubernetes gRPC probes, e.g. 0.0.0.0:8086 (default:
    /// off; the health service is always served on --listen behind mTLS).
    #[arg(long, env = "TIDEWATCH_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// A client of the signer at `url`, presenting ingest's certificate
/// (connected lazily: a signer down only delays renewals).
fn signer_client(
    url: &str,
    args: &IngestArgs,
) -> anyhow::Result<SignerClient<tonic::transport::Channel>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |what: &str, p: &Option<PathBuf>| -> anyhow::Result<Vec<u8>> {
        let p = p
            .as_ref()
            .with_context(|| format!("--signer needs {what}"))?;
        std::fs::read(p).with_context(|| format!("cannot read {what} {}", p.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("--signer-ca", &args.signer_ca)?))
        .identity(Identity::from_pem(
            read("--signer-cert", &args.signer_cert)?,
            read("--signer-key", &args.signer_key)?,
        ));
    let channel = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid --signer {url:?}"))?
        .tls_config(tls)
        .with_context(|| format!("invalid --signer {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(SignerClient::new(channel))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received; draining"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received; draining"),
    }
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    for (flag, v) in [
        ("--max-batch-bytes", args.max_batch_bytes),
        ("--max-batch-records", args.max_batch_records),
        ("--max-decoded-bytes", args.max_decoded_bytes),
        ("--kafka-queue-mib", args.kafka_queue_mib as usize),
        ("--max-handshakes", args.max_handshakes),
        (
            "--handshake-timeout-secs",
            args.handshake_timeout_secs as usize,
        ),
        ("--max-connections", args.max_connections),
        (
            "--max-connections-per-sensor",
            args.max_connections_per_sensor,
        ),
        ("--max-streams-per-sensor", args.max_streams_per_sensor),
        (
            "--max-streams-per-connection",
            args.max_streams_per_connection as usize,
        ),
        ("--tls-reload-secs", args.tls_reload_secs as usize),
        (
            "--max-connection-age-secs",
            args.max_connection_age_secs as usize,
        ),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    let tls_files = tls::TlsFiles {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        client_ca: args.client_ca.clone(),
        crl: args.crl.clone(),
    };
    let tls_cfg = tls::server_config(&tls_files).context("loading TLS material")?;
    let envelope_key = SigningKey::load(&args.envelope_signing_key)?;
    let signer = match &args.signer {
        Some(url) => Some(signer_client(url, &args)?),
        None => None,
    };

    let producer = args
        .kafka
        .producer(args.kafka_timeout_ms, args.kafka_queue_mib)?;
    crate::kafka::wait_for_topic(
        &producer,
        &args.kafka.kafka_brokers,
        &args.kafka.kafka_topic,
    )
    .await?;

    let metrics = IngestMetrics::new();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let metrics_task = {
        let serving = serving.clone();
        crate::metrics::start(
            args.metrics_listen,
            metrics.registry.clone(),
            Arc::new(move || {
                if serving.load(std::sync::atomic::Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("draining: shutting down".into())
                }
            }),
        )
        .await?
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let limits = Limits {
        max_batch_bytes: args.max_batch_bytes,
        max_records: args.max_batch_records,
        max_decoded_bytes: args.max_decoded_bytes,
        max_streams_per_sensor: args.max_streams_per_sensor,
        link_table_bytes: args.link_table_bytes,
        kafka_timeout: Duration::from_millis(args.kafka_timeout_ms),
        ..Limits::default()
    };
    info!(key_id = %envelope_key.id(), signer = ?args.signer, "envelopes are signed");
    let svc = IngestService::new(
        producer.clone(),
        args.kafka.kafka_topic.clone(),
        limits,
        metrics.clone(),
        shutdown_rx,
    )
    .with_trust(Some(envelope_key), signer);
    health_reporter
        .set_serving::<UplinkServer<IngestService>>()
        .await;

    let health_task = match args.health_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for health checks on {addr}"))?;
            info!(listen = %l.local_addr()?, "plaintext gRPC health service listening");
            let svc = health_service.clone();
            Some(tokio::spawn(async move {
                let r = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                    .await;
                if let Err(e) = r {
                    warn!(error = %e, "health listener failed");
                }
            }))
        }
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let (conn_tx, conn_rx) = mpsc::channel(64);
    let (cfg_tx, cfg_rx) = watch::channel(tls_cfg);
    let open = Arc::new(tls::OpenConns::default());
    if let Some(crl) = &args.crl {
        metrics
            .crl_revoked
            .set(tls::revoked_serials(crl).context("reading the CRL")?.len() as f64);
    }
    let reload = tokio::spawn(tls::watch_files(
        tls_files,
        cfg_tx,
        open.clone(),
        metrics.clone(),
        Duration::from_secs(args.tls_reload_secs),
    ));
    let accept = tokio::spawn(tls::accept_loop(
        listener,
        cfg_rx,
        conn_tx,
        open,
        metrics.clone(),
        tls::AcceptLimits {
            handshakes: args.max_handshakes,
            handshake_timeout: Duration::from_secs(args.handshake_timeout_secs),
            connections: args.max_connections,
            per_sensor: args.max_connections_per_sensor,
            max_age: Duration::from_secs(args.max_connection_age_secs),
            drain_grace: Duration::from_secs(args.drain_grace_secs),
            identity: IdentityPolicy {
                legacy_cn: args.allow_legacy_cn_identity,
            },
        },
    ));
    info!(listen = %local, topic = %args.kafka.kafka_topic, brokers = %args.kafka.kafka_brokers, "ingest listening");

    // gRPC-level limit: a little above the payload limit so that an oversized
    // payload still reaches validation and gets a TOO_LARGE ack; anything far
    // larger is cut off by tonic with RESOURCE_EXHAUSTED.
    let grpc_limit = args.max_batch_bytes.saturating_mul(2).max(64 * 1024);
    let uplink = UplinkServer::new(svc).max_decoding_message_size(grpc_limit);
    let hr = health_reporter.clone();
    let signal = async move {
        shutdown_signal().await;
        serving.store(false, std::sync::atomic::Ordering::Relaxed);
        hr.set_not_serving::<UplinkServer<IngestService>>().await;
        let _ = shutdown_tx.send(true);
        // shutdown_tx lives until here: streams see the flag, drain and end.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tonic::transport::Server::builder()
        .max_concurrent_streams(args.max_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(uplink)
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), signal)
        .await
        .context("gRPC server failed")?;
    accept.abort();
    reload.abort();
    let flush = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10)));
    if let Ok(Err(e)) = flush.await {
        warn!(error = %e, "producer flush at shutdown incomplete");
    }
    metrics.log("ingest stopped");
    if let Some(t) = health_task {
        t.abort();
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    Ok(())
}
