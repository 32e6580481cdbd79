//! Kafka clients (librdkafka through rdkafka), configured for the delivery
//! contract: the producer is idempotent with `acks=all`, so a batch acked to a
//! sensor is on every in-sync replica; the consumer never auto-commits, so an
//! offset is committed only after its rows are in ClickHouse.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::ClientContext;
use std::time::Duration;

use anyhow::bail;
use rdkafka::producer::{FutureProducer, Producer};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("invalid --kafka-option {0:?}: expected KEY=VALUE")]
    Option(String),
    #[error("cannot create Kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
}

/// Common connection settings.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (comma-separated host:port).
    #[arg(
        long,
        env = "TIDEWATCH_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,
    /// Topic of ingested batches.
    #[arg(long, env = "TIDEWATCH_KAFKA_TOPIC", default_value = tidewatch_proto::BATCHES_TOPIC)]
    pub kafka_topic: String,
    /// Extra librdkafka settings, e.g. security.protocol=SASL_SSL (repeatable).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
    /// SASL user name (sets sasl.username; prefer the environment variable).
    #[arg(long, env = "TIDEWATCH_KAFKA_USERNAME", hide_env_values = true)]
    pub kafka_username: Option<String>,
    /// SASL password (sets sasl.password; prefer the environment variable).
    #[arg(long, env = "TIDEWATCH_KAFKA_PASSWORD", hide_env_values = true)]
    pub kafka_password: Option<String>,
    /// Static group membership of a consumer (sink, detect, deliver; ingest
    /// ignores it): a name of this replica that stays the same across its
    /// restarts (the chart uses the pod name). A replica that
    /// crashes and restarts under the same name gets its partitions back at
    /// once, without taking them from the other replicas of its consumer
    /// group; a replica gone for good is dropped by the group after its
    /// session timeout (10 s). Unique per replica.
    #[arg(long, env = "TIDEWATCH_KAFKA_GROUP_INSTANCE_ID", value_name = "NAME")]
    pub kafka_group_instance_id: Option<String>,
}

impl KafkaArgs {
    /// Connection settings, then `defaults`, then the operator's
    /// `--kafka-option`s (which win over the defaults).
    fn config(&self, defaults: &[(&str, String)]) -> Result<ClientConfig, KafkaSetupError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka_brokers)
            .set("client.id", format!("tidewatch-{}", node_name()))
            .set("log_level", "4");
        for (k, v) in defaults {
            c.set(*k, v);
        }
        if let Some(u) = self.kafka_username.as_deref().filter(|u| !u.is_empty()) {
            c.set("sasl.username", u);
        }
        if let Some(p) = self.kafka_password.as_deref().filter(|p| !p.is_empty()) {
            c.set("sasl.password", p);
        }
        for opt in &self.kafka_options {
            let (k, v) = opt
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| KafkaSetupError::Option(opt.clone()))?;
            c.set(k.trim(), v.trim());
        }
        Ok(c)
    }

    /// An idempotent producer. `message_timeout_ms` bounds how long a batch
    /// may wait for Kafka before the sensor gets a retryable refusal; its
    /// queue of messages not yet delivered holds at most `queue_mib` MiB
    /// (librdkafka's default, 1 GiB, is more than a pod's memory).
    pub fn producer(
        &self,
        message_timeout_ms: u64,
        queue_mib: u32,
    ) -> Result<FutureProducer, KafkaSetupError> {
        let c = self.config(&[
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("max.in.flight.requests.per.connection", "5".into()),
            ("linger.ms", "5".into()),
            ("message.max.bytes", "2097152".into()),
            ("message.timeout.ms", message_timeout_ms.to_string()),
            (
                "queue.buffering.max.kbytes",
                (queue_mib.max(1) * 1024).to_string(),
            ),
            ("queue.buffering.max.messages", "100000".into()),
        ])?;
        Ok(c.create()?)
    }

    /// A consumer for reading partitions it is assigned, in no group and
    /// committing nothing (tools that read a topic back).
    pub fn reader(&self) -> Result<rdkafka::consumer::BaseConsumer, KafkaSetupError> {
        let c = self.config(&[
            (
                "group.id",
                format!("tidewatch-reader-{}", std::process::id()),
            ),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("isolation.level", "read_committed".into()),
        ])?;
        Ok(c.create()?)
    }

    /// A consumer in `group` with manual commits.
    pub fn consumer(&self, group: &str) -> Result<GroupConsumer, KafkaSetupError> {
        let mut c = self.config(&[
            ("group.id", group.to_string()),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("auto.offset.reset", "earliest".into()),
            // While ClickHouse is down the sink retries an insert without
            // polling; past this it leaves the group, and rejoins (consuming
            // again from the last commit) once the insert went through.
            ("max.poll.interval.ms", "600000".into()),
            ("session.timeout.ms", "10000".into()),
            ("isolation.level", "read_committed".into()),
        ])?;
        if let Some(id) = self
            .kafka_group_instance_id
            .as_deref()
            .filter(|i| !i.is_empty())
        {
            c.set("group.instance.id", id);
        }
        Ok(c.create_with_context(GroupLog {
            group: group.to_string(),
        })?)
    }
}

/// A consumer in a group (sink, detector, deliver): it logs what the
/// group's rebalances give it and take from it.
pub type GroupConsumer = StreamConsumer<GroupLog>;

/// Logs each rebalance of a [`GroupConsumer`]: which partitions it was
/// assigned or lost, so an operator sees how replicas share the topic.
pub struct GroupLog {
    group: String,
}

impl ClientContext for GroupLog {}

impl ConsumerContext for GroupLog {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let list = |tpl: &rdkafka::TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(group = %self.group, partitions = %list(tpl), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(group = %self.group, partitions = %list(tpl), "partitions revoked")
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "rebalance failed")
            }
        }
    }
}

/// Host name of this process, for client ids and tracing.
pub fn node_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Waits (up to a minute) until the brokers answer and `topic` exists.
pub async fn wait_for_topic(
    producer: &FutureProducer,
    brokers: &str,
    topic: &str,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = producer.clone();
        let t = topic.to_string();
        let md = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&t), Duration::from_secs(5))
                .map(|m| {
                    m.topics()
                        .iter()
                        .any(|x| x.name() == t && x.error().is_none() && !x.partitions().is_empty())
                })
        })
        .await?;
        let late = std::time::Instant::now() > deadline;
        match md {
            Ok(true) => return Ok(()),
            Ok(false) if late => bail!(
                "Kafka topic {topic:?} does not exist on {brokers}; create it first \
                 (deploy/local/stack.sh creates it for the local stack)"
            ),
            Err(e) if late => bail!("Kafka brokers {brokers} unreachable: {e}"),
            Ok(false) => warn!(topic, "Kafka topic not found yet; retrying"),
            Err(e) => warn!(error = %e, brokers, "Kafka not reachable yet; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    /// The chart's default: TLS and SCRAM. librdkafka refuses these settings
    /// at client creation when it was built without OpenSSL, so this checks
    /// the build as much as the settings.
    #[tokio::test]
    async fn clients_take_tls_with_scram_as_the_chart_sets_them() {
        let cli = Cli::parse_from([
            "x",
            "--kafka-brokers",
            "127.0.0.1:1",
            "--kafka-option",
            "security.protocol=SASL_SSL",
            "--kafka-option",
            "sasl.mechanism=SCRAM-SHA-512",
            "--kafka-username",
            "ingest",
            "--kafka-password",
            "secret",
        ]);
        let c = cli.kafka.config(&[]).unwrap();
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.username"), Some("ingest"));
        let _producer = cli
            .kafka
            .producer(1000, 1)
            .expect("SASL_SSL + SCRAM producer");
        let _consumer = cli.kafka.consumer("g").expect("SASL_SSL + SCRAM consumer");
        let bad = Cli::parse_from(["x", "--kafka-option", "sasl.mechanism"]);
        assert!(matches!(
            bad.kafka.config(&[]),
            Err(KafkaSetupError::Option(_))
        ));
    }
}
