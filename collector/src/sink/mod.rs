//! `tidewatch-collector sink`: Kafka -> ClickHouse.
//!
//! The loop, per chunk (up to `--max-rows` rows or `--max-wait-ms`):
//! 1. consume records; check each one's signature (only what ingest signed
//!    is stored, see [`crate::envelope`]); decode each `IngestedBatch` and
//!    its payload; refused and undecodable records are written to the
//!    dead-letter topic with the reason (and do not block the partition);
//! 2. skip batches already stored (per-sensor memory, loaded from the
//!    `batches` ledger on first sight of a sensor);
//! 3. insert flows, assets and status rows, then the ledger rows, retrying
//!    with exponential backoff for as long as ClickHouse is unavailable;
//! 4. only then commit the consumed offsets.
//!
//! A crash anywhere before 4 means the chunk is consumed again; what was
//! already inserted is collapsed by the schema (see `schema`), so query results
//! count every flow once.
//!
//! Steps 1 and 2 run in a task of their own (`collect.rs`), steps 3 and 4
//! in the sink's main task (`store.rs`): while ClickHouse stores a chunk,
//! the next one is consumed and decoded. Chunks are stored and committed
//! in the order they were collected; a batch of the chunk being stored is
//! skipped by the next chunk as one already stored would be.
//!
//! Here: the options and the setup (`run`: consumer, dead-letter producer,
//! signals, metrics, lag, the two tasks).

mod collect;
pub mod dedup;
pub mod rows;
mod store;

pub use store::MAX_DAYS_PER_INSERT;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::Consumer;

use crate::kafka::GroupConsumer;
use rdkafka::Offset;
use tracing::info;

use crate::clickhouse_args::ClickHouseArgs;
use crate::kafka::KafkaArgs;
use crate::metrics::SinkMetrics;
use collect::{ChunkLimits, Collector};
use dedup::SeenBatches;
use store::Store;

#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Kafka consumer group; run several sinks in one group to share partitions.
    #[arg(long, env = "TIDEWATCH_SINK_GROUP", default_value = "tidewatch-sink")]
    pub group: String,
    /// Topic for records that cannot be decoded or stored.
    #[arg(long, env = "TIDEWATCH_DEADLETTER_TOPIC", default_value = tidewatch_proto::DEADLETTER_TOPIC)]
    pub deadletter_topic: String,
    /// Rows per ClickHouse insert (at most; a chunk closes earlier on --max-wait-ms).
    #[arg(long, default_value_t = 100_000)]
    pub max_rows: usize,
    /// Bytes of Kafka records per chunk (at most, roughly: a chunk closes
    /// once it holds this many).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_chunk_bytes: usize,
    /// Milliseconds to wait for more records before inserting a partial chunk.
    #[arg(long, default_value_t = 1000)]
    pub max_wait_ms: u64,
    /// Largest decompressed batch payload, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_decoded_bytes: usize,
    /// Records whose capture time is more than this many days before their
    /// batch was received are dead-lettered, not stored (0: no limit;
    /// records from before 2000, a clock at 1970, are dead-lettered always).
    #[arg(long, default_value_t = 0)]
    pub max_record_age_days: u32,
    /// Records whose capture time is more than this many seconds after
    /// their batch was received are dead-lettered (a clock in the future).
    #[arg(long, default_value_t = 86_400)]
    pub max_clock_ahead_secs: u64,
    /// Largest number of records in one batch (as ingest's
    /// --max-batch-records); a larger one is dead-lettered.
    #[arg(long, default_value_t = 50_000)]
    pub max_batch_records: usize,
    #[command(flatten)]
    pub envelope: crate::envelope::VerifyArgs,
    /// Fault injection for tests: exit after inserting the first chunk's rows,
    /// before writing the ledger and committing offsets (a crash at the worst moment).
    #[arg(long, hide = true)]
    pub fault_exit_after_insert: bool,
    /// Serve Prometheus metrics (/metrics) and liveness (/healthz) over
    /// plain HTTP on this address, e.g. 0.0.0.0:9101 (default: off).
    #[arg(long, env = "TIDEWATCH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Sets the sink up and runs its worker until SIGTERM/SIGINT.
pub async fn run(args: SinkArgs) -> anyhow::Result<()> {
    args.clickhouse.validate()?;
    if args.max_rows == 0 || args.max_chunk_bytes == 0 {
        anyhow::bail!("--max-rows and --max-chunk-bytes must be at least 1");
    }
    let verify = args.envelope.keys()?;
    let dlq = args.kafka.producer(30_000, 64)?;
    crate::kafka::wait_for_topic(&dlq, &args.kafka.kafka_brokers, &args.kafka.kafka_topic).await?;
    crate::kafka::wait_for_topic(&dlq, &args.kafka.kafka_brokers, &args.deadletter_topic).await?;
    let consumer = args.kafka.consumer(&args.group)?;
    consumer
        .subscribe(&[&args.kafka.kafka_topic])
        .with_context(|| format!("subscribing to {}", args.kafka.kafka_topic))?;
    let stop = crate::metrics::stop_on_signal("finishing the current chunk");
    let ch = args.clickhouse.client();
    let metrics = SinkMetrics::new();
    let consumer = Arc::new(consumer);
    let metrics_task =
        crate::metrics::start_until(args.metrics_listen, metrics.registry.clone(), stop.clone())
            .await?;
    // The lag task holds only a weak reference: dropping the sink closes the
    // consumer (leaving the group) at once.
    let lag_task = tokio::spawn(lag_loop(Arc::downgrade(&consumer), metrics.clone()));
    info!(topic = %args.kafka.kafka_topic, group = %args.group, clickhouse = %args.clickhouse.clickhouse_url,
        database = %args.clickhouse.clickhouse_database, "sink started");
    let mut store = Store {
        consumer: consumer.clone(),
        dlq,
        ch: ch.clone(),
        metrics: metrics.clone(),
        stop: stop.clone(),
        fault_exit: false,
        args,
    };
    store.wait_for_schema().await;
    let (chunk_tx, chunk_rx) = tokio::sync::mpsc::channel(1);
    let (stored_tx, stored_rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = Collector {
        consumer,
        ch,
        seen: SeenBatches::new(100_000),
        stored: stored_rx,
        spare: Vec::new(),
        verify,
        limits: ChunkLimits::of(&store.args),
        metrics,
        stop,
    };
    let collecting = tokio::spawn(collector.run(chunk_tx));
    store.run(chunk_rx, stored_tx).await;
    // The chunk being collected is dropped, uncommitted. A consumer task
    // that failed ended the store's loop: the sink fails with it.
    collecting.abort();
    if let Err(e) = collecting.await {
        if e.is_panic() {
            anyhow::bail!("the sink's consuming task failed: {e}");
        }
    }
    if store.fault_exit {
        // Close the consumer (leaving the group, committing nothing) so the
        // next sink gets the partitions at once, then exit as a crash would.
        lag_task.abort();
        let consumer = Arc::downgrade(&store.consumer);
        drop(store);
        while consumer.strong_count() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::process::exit(70);
    }
    lag_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    store.log("sink stopped");
    Ok(())
}

/// Refreshes the consumer-lag gauge every 5 s (also while an insert is
/// being retried, which is when the lag grows).
async fn lag_loop(consumer: std::sync::Weak<GroupConsumer>, metrics: Arc<SinkMetrics>) {
    loop {
        let Some(c) = consumer.upgrade() else { return };
        let m = metrics.clone();
        let _ = tokio::task::spawn_blocking(move || refresh_lag(&c, &m)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Lag per assigned partition: high watermark minus committed offset (or
/// minus the low watermark when nothing was committed yet). Blocking.
fn refresh_lag(consumer: &GroupConsumer, metrics: &SinkMetrics) {
    let t = Duration::from_secs(2);
    let Ok(committed) = consumer.committed(t) else {
        return;
    };
    let mut lag = std::collections::BTreeMap::new();
    for e in committed.elements() {
        let Ok((low, high)) = consumer.fetch_watermarks(e.topic(), e.partition(), t) else {
            continue;
        };
        let pos = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lag.insert(e.partition(), (high - pos).max(0));
    }
    *metrics.lag.lock().expect("lag lock") = lag;
}
