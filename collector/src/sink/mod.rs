//! `tidewatch-collector sink`: Kafka -> ClickHouse.
//!
//! The loop, per chunk (up to `--max-rows` rows or `--max-wait-ms`):
//! 1. consume records; decode each `IngestedBatch` and its payload;
//!    undecodable records are written to the dead-letter topic with the
//!    reason (and do not block the partition);
//! 2. skip batches already stored (per-sensor memory, loaded from the
//!    `batches` ledger on first sight of a sensor);
//! 3. insert flows, assets and status rows, then the ledger rows, retrying
//!    with exponential backoff for as long as ClickHouse is unavailable;
//! 4. only then commit the consumed offsets.
//!
//! A crash anywhere before 4 means the chunk is consumed again; what was
//! already inserted is collapsed by the schema (see `schema`), so query results
//! count every flow once.

pub mod dedup;
pub mod rows;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clickhouse::Client;
use prost::Message as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tidewatch_proto::util::now_us;
use tidewatch_proto::v1::{DeadLetter, IngestedBatch};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::clickhouse_args::ClickHouseArgs;
use crate::ingest::service::decode_payload;
use crate::kafka::KafkaArgs;
use crate::metrics::SinkMetrics;
use dedup::SeenBatches;
use rows::{append_rows, Rows};

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
    /// Milliseconds to wait for more records before inserting a partial chunk.
    #[arg(long, default_value_t = 1000)]
    pub max_wait_ms: u64,
    /// Largest decompressed batch payload, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_decoded_bytes: usize,
    /// Fault injection for tests: exit after inserting the first chunk's rows,
    /// before writing the ledger and committing offsets (a crash at the worst moment).
    #[arg(long, hide = true)]
    pub fault_exit_after_insert: bool,
    /// Serve Prometheus metrics (/metrics) and liveness (/healthz) over
    /// plain HTTP on this address, e.g. 0.0.0.0:9101 (default: off).
    #[arg(long, env = "TIDEWATCH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

struct Chunk {
    rows: Rows,
    /// Highest offset consumed per (topic, partition).
    offsets: HashMap<(String, i32), i64>,
    dead: Vec<DeadLetter>,
    batches: Vec<(String, u64)>,
    in_chunk: HashSet<(String, u64)>,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            rows: Rows::default(),
            offsets: HashMap::new(),
            dead: Vec::new(),
            batches: Vec::new(),
            in_chunk: HashSet::new(),
        }
    }
}

struct Sink {
    args: SinkArgs,
    consumer: Arc<StreamConsumer>,
    dlq: FutureProducer,
    ch: Client,
    seen: SeenBatches,
    metrics: Arc<SinkMetrics>,
    shutdown: watch::Receiver<bool>,
    /// Set when fault injection stopped the sink.
    fault_exit: bool,
}

pub async fn run(args: SinkArgs) -> anyhow::Result<()> {
    args.clickhouse.validate()?;
    if args.max_rows == 0 {
        anyhow::bail!("--max-rows must be at least 1");
    }
    let dlq = args.kafka.producer(30_000)?;
    crate::kafka::wait_for_topic(&dlq, &args.kafka.kafka_brokers, &args.kafka.kafka_topic).await?;
    crate::kafka::wait_for_topic(&dlq, &args.kafka.kafka_brokers, &args.deadletter_topic).await?;
    let consumer = args.kafka.consumer(&args.group)?;
    consumer
        .subscribe(&[&args.kafka.kafka_topic])
        .with_context(|| format!("subscribing to {}", args.kafka.kafka_topic))?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; finishing the current chunk"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received; finishing the current chunk"),
        }
        let _ = tx.send(true);
    });
    let ch = args.clickhouse.client();
    let metrics = SinkMetrics::new();
    let consumer = Arc::new(consumer);
    let metrics_task = {
        let stop = rx.clone();
        crate::metrics::start(
            args.metrics_listen,
            metrics.registry.clone(),
            Arc::new(move || {
                if *stop.borrow() {
                    Err("shutting down".into())
                } else {
                    Ok(())
                }
            }),
        )
        .await?
    };
    // The lag task holds only a weak reference: dropping the sink closes the
    // consumer (leaving the group) at once.
    let lag_task = tokio::spawn(lag_loop(Arc::downgrade(&consumer), metrics.clone()));
    info!(topic = %args.kafka.kafka_topic, group = %args.group, clickhouse = %args.clickhouse.clickhouse_url,
        database = %args.clickhouse.clickhouse_database, "sink started");
    let mut sink = Sink {
        args,
        consumer,
        dlq,
        ch,
        seen: SeenBatches::new(100_000),
        metrics,
        shutdown: rx,
        fault_exit: false,
    };
    sink.wait_for_schema().await;
    sink.run().await;
    if sink.fault_exit {
        // Close the consumer (leaving the group, committing nothing) so the
        // next sink gets the partitions at once, then exit as a crash would.
        lag_task.abort();
        let consumer = Arc::downgrade(&sink.consumer);
        drop(sink);
        while consumer.strong_count() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::process::exit(70);
    }
    lag_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    sink.log("sink stopped");
    Ok(())
}

/// Refreshes the consumer-lag gauge every 5 s (also while an insert is
/// being retried, which is when the lag grows).
async fn lag_loop(consumer: std::sync::Weak<StreamConsumer>, metrics: Arc<SinkMetrics>) {
    loop {
        let Some(c) = consumer.upgrade() else { return };
        let m = metrics.clone();
        let _ = tokio::task::spawn_blocking(move || refresh_lag(&c, &m)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Lag per assigned partition: high watermark minus committed offset (or
/// minus the low watermark when nothing was committed yet). Blocking.
fn refresh_lag(consumer: &StreamConsumer, metrics: &SinkMetrics) {
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

impl Sink {
    fn log(&self, what: &'static str) {
        let m = &self.metrics;
        info!(
            records = m.kafka_records.get(),
            batches = m.batches_stored.get(),
            flows = m.rows_inserted.get("flows_raw"),
            duplicates_skipped = m.duplicates_skipped.get(),
            dead_lettered = m.dead_lettered.get(),
            insert_retries = m.insert_retries.get(),
            "{what}"
        );
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn pause(&mut self, d: Duration) {
        let mut s = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = s.wait_for(|v| *v) => {}
        }
    }

    /// Waits until ClickHouse answers and the schema exists.
    async fn wait_for_schema(&mut self) {
        let mut logged = false;
        while !self.stopping() {
            let r: Result<u64, _> = self
                .ch
                .query(
                    "SELECT count() FROM system.tables WHERE database = ? AND name = 'flows_raw'",
                )
                .bind(&self.args.clickhouse.clickhouse_database)
                .fetch_one()
                .await;
            match r {
                Ok(1) => return,
                Ok(_) if !logged => {
                    warn!(
                        "tidewatch schema not found; run `tidewatch-collector migrate` (waiting)"
                    );
                    logged = true;
                }
                Err(e) if !logged => {
                    warn!(error = %e, "ClickHouse not reachable yet (waiting)");
                    logged = true;
                }
                _ => {}
            }
            self.pause(Duration::from_secs(1)).await;
        }
    }

    async fn run(&mut self) {
        let mut last_log = Instant::now();
        while !self.stopping() {
            let Some(chunk) = self.collect().await else {
                break;
            };
            if !self.store(chunk).await {
                break; // shutting down before the chunk was stored: not committed
            }
            if last_log.elapsed() > Duration::from_secs(30) {
                self.log("sink progress");
                last_log = Instant::now();
            }
        }
    }

    /// Consumes one chunk. `None` when shutting down before anything arrived.
    async fn collect(&mut self) -> Option<Chunk> {
        let mut chunk = Chunk::new();
        let mut shutdown = self.shutdown.clone();
        // First record: wait as long as it takes.
        let first = loop {
            tokio::select! {
                m = self.consumer.recv() => match m {
                    Ok(m) => break detach(&m),
                    Err(e) => {
                        warn!(error = %e, "Kafka consume error");
                        self.pause(Duration::from_millis(500)).await;
                    }
                },
                _ = shutdown.wait_for(|v| *v) => return None,
            }
        };
        self.accept(first, &mut chunk).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.args.max_wait_ms);
        while chunk.rows.len() < self.args.max_rows && !self.stopping() {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    let d = detach(&m);
                    self.accept(d, &mut chunk).await;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "Kafka consume error");
                    break;
                }
                Err(_) => break,
            }
        }
        Some(chunk)
    }

    /// Decodes one record into the chunk (rows, duplicate, or dead letter).
    async fn accept(&mut self, m: Detached, chunk: &mut Chunk) {
        self.metrics.kafka_records.inc();
        let e = chunk
            .offsets
            .entry((m.topic.clone(), m.partition))
            .or_insert(m.offset);
        *e = (*e).max(m.offset);
        let dead = |reason: String| DeadLetter {
            topic: m.topic.clone(),
            partition: m.partition,
            offset: m.offset,
            reason,
            key: m.key.clone().unwrap_or_default(),
            value: m.payload.clone().unwrap_or_default(),
            failed_us: now_us(),
        };
        let Some(payload) = m.payload.as_deref() else {
            chunk.dead.push(dead("record has no value".into()));
            return;
        };
        let env = match IngestedBatch::decode(payload) {
            Ok(e) if !e.sensor_id.is_empty() && e.seq > 0 => e,
            Ok(_) => {
                chunk
                    .dead
                    .push(dead("envelope lacks sensor_id or seq".into()));
                return;
            }
            Err(e) => {
                chunk.dead.push(dead(format!("not an IngestedBatch: {e}")));
                return;
            }
        };
        let batch = match decode_payload(env.encoding, &env.payload, self.args.max_decoded_bytes) {
            Ok(b) => b,
            Err((_, detail)) => {
                chunk.dead.push(dead(detail));
                return;
            }
        };
        self.ensure_loaded(&env.sensor_id).await;
        let key = (env.sensor_id.clone(), env.seq);
        if self.seen.contains(&env.sensor_id, env.seq) || chunk.in_chunk.contains(&key) {
            self.metrics.duplicates_skipped.inc();
            debug!(sensor = %env.sensor_id, seq = env.seq, "duplicate batch skipped");
            return;
        }
        if let Err(e) = append_rows(&env, &batch, m.partition, m.offset, &mut chunk.rows) {
            chunk.dead.push(dead(format!("cannot store batch: {e}")));
            return;
        }
        chunk.in_chunk.insert(key.clone());
        chunk.batches.push(key);
    }

    /// Loads the sensor's stored seqs from the ledger, once per process.
    async fn ensure_loaded(&mut self, sensor: &str) {
        if self.seen.knows_sensor(sensor) {
            return;
        }
        let mut backoff = Duration::from_millis(200);
        loop {
            let r: Result<Vec<u64>, _> = self
                .ch
                .query("SELECT seq FROM batches WHERE sensor_id = ? ORDER BY seq DESC LIMIT 100000")
                .bind(sensor)
                .fetch_all()
                .await;
            match r {
                Ok(seqs) => {
                    if backoff > Duration::from_millis(200) {
                        info!(sensor, "ClickHouse read succeeded after retries");
                    }
                    debug!(sensor, n = seqs.len(), "loaded stored batch seqs");
                    self.seen.load(sensor, seqs);
                    return;
                }
                Err(e) => {
                    warn!(sensor, error = %e, retry_in = ?backoff, "ClickHouse read of the batch ledger failed; offsets stay uncommitted");
                    if self.stopping() {
                        // Nothing will be committed; dedup falls back to the schema.
                        self.seen.load(sensor, []);
                        return;
                    }
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Dead letters, inserts, ledger, commit. Returns false if interrupted by
    /// shutdown before the offsets were committed.
    async fn store(&mut self, chunk: Chunk) -> bool {
        for d in &chunk.dead {
            if !self.dead_letter(d).await {
                return false;
            }
        }
        let n_rows = chunk.rows.len();
        let started = Instant::now();
        if !self.retry(Stage::Rows, &chunk.rows).await {
            return false;
        }
        if self.args.fault_exit_after_insert {
            error!(
                rows = n_rows,
                "fault injection: exiting after insert, before ledger and commit"
            );
            self.fault_exit = true;
            return false;
        }
        if !self.retry(Stage::Ledger, &chunk.rows).await {
            return false;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &chunk.offsets {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
            {
                error!(error = %e, "cannot build offset list");
            }
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => self.metrics.commits.inc(),
            // Rows are stored; the records will be consumed again and skipped.
            Err(e) => {
                warn!(error = %e, "offset commit failed; records will be redelivered and de-duplicated")
            }
        }
        for (sensor, seq) in &chunk.batches {
            self.seen.insert(sensor, *seq);
        }
        let m = &self.metrics;
        m.batches_stored.add(chunk.batches.len() as u64);
        m.rows_inserted
            .add("flows_raw", chunk.rows.flows.len() as u64);
        m.rows_inserted
            .add("assets_raw", chunk.rows.assets.len() as u64);
        m.rows_inserted
            .add("sensor_status_raw", chunk.rows.statuses.len() as u64);
        m.rows_inserted
            .add("batches", chunk.rows.batches.len() as u64);

        debug!(
            rows = n_rows,
            batches = chunk.batches.len(),
            dead = chunk.dead.len(),
            ms = started.elapsed().as_millis() as u64,
            "chunk stored and committed"
        );
        true
    }

    /// Runs one write stage until it succeeds or the sink is told to stop.
    async fn retry(&mut self, stage: Stage, rows: &Rows) -> bool {
        let what = match stage {
            Stage::Rows => "insert rows",
            Stage::Ledger => "insert ledger",
        };
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0u32;
        loop {
            let t0 = Instant::now();
            let r = match stage {
                Stage::Rows => insert_rows(&self.ch, rows).await,
                Stage::Ledger => insert_table(&self.ch, "batches", &rows.batches).await,
            };
            match r {
                Ok(()) => {
                    self.metrics.insert_seconds.observe_duration(t0.elapsed());
                    if attempt > 0 {
                        info!(
                            what,
                            attempts = attempt + 1,
                            "ClickHouse write succeeded after retries"
                        );
                    }
                    return true;
                }
                Err(e) => {
                    attempt += 1;
                    self.metrics.insert_retries.inc();
                    warn!(what, attempt, error = %e, retry_in = ?backoff, "ClickHouse write failed; offsets stay uncommitted");
                    if self.stopping() {
                        return false;
                    }
                    self.pause(backoff).await;
                    if self.stopping() {
                        return false;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn dead_letter(&mut self, d: &DeadLetter) -> bool {
        warn!(topic = %d.topic, partition = d.partition, offset = d.offset, reason = %d.reason,
            "undecodable record sent to the dead-letter topic");
        let value = d.encode_to_vec();
        loop {
            let rec = FutureRecord::to(&self.args.deadletter_topic)
                .key(&d.key)
                .payload(&value);
            match self.dlq.send(rec, Timeout::Never).await {
                Ok(_) => {
                    self.metrics.dead_lettered.inc();
                    return true;
                }
                Err((e, _)) => {
                    warn!(error = %e, "dead-letter write failed; retrying");
                    if self.stopping() {
                        return false;
                    }
                    self.pause(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Stage {
    Rows,
    Ledger,
}

/// An owned copy of what the sink needs from a Kafka message.
struct Detached {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

fn detach(m: &BorrowedMessage<'_>) -> Detached {
    Detached {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
    }
}

async fn insert_table<T>(
    ch: &Client,
    table: &str,
    rows: &[T],
) -> Result<(), clickhouse::error::Error>
where
    T: clickhouse::Row + clickhouse::RowWrite + serde::Serialize,
    for<'b> T: clickhouse::Row<Value<'b> = T>,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut ins = ch.insert::<T>(table).await?.with_timeouts(
        Some(Duration::from_secs(30)),
        Some(Duration::from_secs(120)),
    );
    for r in rows {
        ins.write(r).await?;
    }
    ins.end().await
}

async fn insert_rows(ch: &Client, rows: &Rows) -> Result<(), clickhouse::error::Error> {
    insert_table(ch, "flows_raw", &rows.flows).await?;
    insert_table(ch, "assets_raw", &rows.assets).await?;
    insert_table(ch, "sensor_status_raw", &rows.statuses).await
}
