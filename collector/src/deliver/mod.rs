//! `tidewatch-collector deliver`: alerts from the alerts topic into the
//! tools a SOC watches: a syslog receiver ([`syslog`]) or a webhook
//! ([`webhook`]). One process per destination, each with its own consumer
//! group, so one receiver being down holds back no other.
//!
//! Nothing lost, nothing twice per alert id:
//! - the consumer group's committed offset is the destination's cursor: it
//!   moves only past alerts delivered (a receiver that is down is retried
//!   with backoff, for as long as it takes);
//! - the ids delivered are recorded in ClickHouse (`alert_deliveries`) and
//!   read back at start, so an alert the detector raised again (same id,
//!   later in the topic) is not sent again;
//! - between a delivery and its record a crash can resend one alert: every
//!   message carries the alert id for the receiver to key on.

pub mod syslog;
pub mod webhook;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use clickhouse::Client;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::alerts::Alert;
use crate::clickhouse_args::ClickHouseArgs;
use crate::kafka::KafkaArgs;
use crate::metrics::DeliverMetrics;
use syslog::{Body, Syslog};
use webhook::Webhook;

#[derive(Debug, clap::Args)]
pub struct DeliverArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Topic the detector publishes alerts to.
    #[arg(long, env = "TIDEWATCH_ALERTS_TOPIC", default_value = crate::detect::ALERTS_TOPIC)]
    pub alerts_topic: String,
    /// Name of this destination: its consumer group is
    /// tidewatch-deliver-NAME and its deliveries are recorded under it.
    #[arg(long)]
    pub name: String,
    /// Syslog receiver (host:port), RFC 5424 over TCP, octet-counted.
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present = "webhook",
        conflicts_with = "webhook"
    )]
    pub syslog: Option<String>,
    /// Over TLS (RFC 5425).
    #[arg(long)]
    pub syslog_tls: bool,
    /// CA of the receiver's certificate (PEM; default: the system's CAs).
    #[arg(long, value_name = "PEM", requires = "syslog_tls")]
    pub syslog_ca: Option<std::path::PathBuf>,
    /// Name the receiver's certificate carries (default: the host).
    #[arg(long, requires = "syslog_tls")]
    pub syslog_server_name: Option<String>,
    /// The message body: JSON, or CEF (ArcSight Common Event Format).
    #[arg(long, value_enum, default_value = "json")]
    pub syslog_format: Body,
    /// Webhook URL (http or https) alerts are POSTed to as JSON.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// CA of an https webhook's certificate (PEM; default: the system's CAs).
    #[arg(long, value_name = "PEM", requires = "webhook")]
    pub webhook_ca: Option<std::path::PathBuf>,
    /// File holding the secret the body is signed with (HMAC-SHA256, header
    /// X-Tidewatch-Signature: sha256=HEX).
    #[arg(long, value_name = "FILE", requires = "webhook")]
    pub webhook_secret_file: Option<std::path::PathBuf>,
    /// Extra header of every POST, "Name: value" (repeatable), e.g. an
    /// authorization token.
    #[arg(long = "webhook-header", value_name = "HEADER", requires = "webhook")]
    pub webhook_headers: Vec<String>,
    /// Serve Prometheus metrics (/metrics) and liveness (/healthz) over
    /// plain HTTP on this address (default: off).
    #[arg(long, env = "TIDEWATCH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Where alerts go.
enum Destination {
    Syslog(Syslog),
    Webhook(Webhook),
}

impl Destination {
    async fn send(&self, a: &Alert) -> anyhow::Result<()> {
        match self {
            Destination::Syslog(s) => s.send(a).await,
            Destination::Webhook(w) => w.send(a).await,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, clickhouse::Row)]
struct Delivery {
    destination: String,
    id: String,
    delivered_at: u32,
}

async fn delivered_ids(ch: &Client, name: &str) -> anyhow::Result<HashSet<String>> {
    let ids: Vec<String> = ch
        .query("SELECT id FROM alert_deliveries WHERE destination = ?")
        .bind(name)
        .fetch_all()
        .await
        .context("reading alert_deliveries (run `migrate` first)")?;
    Ok(ids.into_iter().collect())
}

pub async fn run(args: DeliverArgs) -> anyhow::Result<()> {
    args.clickhouse.validate()?;
    crate::identity::validate_name("destination name", &args.name)?;
    let (dest, target) = match (&args.syslog, &args.webhook) {
        (Some(addr), _) => (
            Destination::Syslog(Syslog::new(
                addr,
                args.syslog_tls,
                args.syslog_ca.as_ref(),
                args.syslog_server_name.as_deref(),
                args.syslog_format,
            )?),
            format!(
                "syslog {addr} (tls: {}, {:?})",
                args.syslog_tls, args.syslog_format
            ),
        ),
        (None, Some(url)) => (
            Destination::Webhook(Webhook::new(
                url,
                args.webhook_ca.as_ref(),
                args.webhook_secret_file.as_ref(),
                &args.webhook_headers,
            )?),
            format!("webhook {url}"),
        ),
        (None, None) => anyhow::bail!("give --syslog or --webhook"),
    };
    let ch = args.clickhouse.client();
    let mut done = delivered_ids(&ch, &args.name).await?;
    let producer = args.kafka.producer(30_000, 1)?;
    crate::kafka::wait_for_topic(&producer, &args.kafka.kafka_brokers, &args.alerts_topic).await?;
    drop(producer);
    let group = format!("tidewatch-deliver-{}", args.name);
    let consumer = args.kafka.consumer(&group)?;
    consumer
        .subscribe(&[&args.alerts_topic])
        .with_context(|| format!("subscribing to {}", args.alerts_topic))?;
    let metrics = DeliverMetrics::new();
    let stop = crate::metrics::stop_on_signal("stopping after the current alert");
    let metrics_task =
        crate::metrics::start_until(args.metrics_listen, metrics.registry.clone(), stop.clone())
            .await?;
    info!(destination = %args.name, to = %target, already_delivered = done.len(), "delivery started");
    'records: loop {
        let m = tokio::select! {
            m = consumer.recv() => m,
            _ = stop.wait() => break,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "Kafka consume error");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let alert: Option<Alert> = m.payload().and_then(|p| serde_json::from_slice(p).ok());
        match alert {
            None => {
                metrics.undecodable.inc();
                warn!(
                    partition = m.partition(),
                    offset = m.offset(),
                    "not an alert; skipped"
                );
            }
            Some(a) if done.contains(&a.id) => {
                metrics.already_delivered.inc();
            }
            Some(a) => {
                let mut backoff = Duration::from_millis(200);
                loop {
                    match dest.send(&a).await {
                        Ok(()) => break,
                        Err(e) => {
                            metrics.failures.inc();
                            warn!(id = %a.id, error = %format!("{e:#}"), retry_in = ?backoff,
                                "alert not delivered; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = stop.wait() => break 'records,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
                let row = Delivery {
                    destination: args.name.clone(),
                    id: a.id.clone(),
                    delivered_at: (tidewatch_proto::util::now_us() / 1_000_000).max(0) as u32,
                };
                let mut backoff = Duration::from_millis(200);
                loop {
                    let r = async {
                        let mut ins = ch.insert::<Delivery>("alert_deliveries").await?;
                        ins.write(&row).await?;
                        ins.end().await
                    }
                    .await;
                    match r {
                        Ok(()) => break,
                        Err(e) => {
                            warn!(error = %e, "cannot record a delivery; retrying");
                            if stop.stopping() {
                                // Not recorded: the alert may be sent once more.
                                break 'records;
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
                metrics.delivered.inc();
                info!(id = %a.id, rule = %a.rule, vessel = %a.vessel, "alert delivered");
                done.insert(a.id);
            }
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))?;
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            warn!(error = %e, "offset commit failed; the alert is skipped when read again (delivered ids are recorded)");
        }
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    info!(delivered = metrics.delivered.get(), "delivery stopped");
    Ok(())
}
