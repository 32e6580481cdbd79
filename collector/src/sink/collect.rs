//! The sink's consuming side ([`Collector`]): consume records, check each
//! one's signature, decode it, skip the batches stored or being stored,
//! and gather the rest into [`Chunk`]s of rows for the store
//! (`store.rs`). It runs in a task of its own, so the next chunk is
//! consumed and decoded while ClickHouse stores the previous one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use prost::Message as _;
use rdkafka::message::{BorrowedMessage, Message};
use tidewatch_proto::codec;
use tidewatch_proto::util::now_us;
use tidewatch_proto::v1::{DeadLetter, IngestedBatch};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::dedup::SeenBatches;
use super::rows::{append_rows, BatchRow, Rows, Table, TimeWindow};
use super::SinkArgs;
use crate::envelope::{signature_of, VerifyKeys};
use crate::kafka::GroupConsumer;
use crate::metrics::SinkMetrics;
use crate::metrics::Stop;

/// Records consumed together and stored together: their rows, dead
/// letters, batches and offsets.
pub(super) struct Chunk {
    pub rows: Rows,
    /// Bytes of the Kafka records consumed.
    pub bytes: usize,
    /// Highest offset consumed per (topic, partition).
    pub offsets: HashMap<(String, i32), i64>,
    pub dead: Vec<DeadLetter>,
    pub batches: Vec<(String, u64)>,
    in_chunk: HashSet<(String, u64)>,
}

impl Chunk {
    fn new(rows: Rows) -> Self {
        Chunk {
            rows,
            bytes: 0,
            offsets: HashMap::new(),
            dead: Vec::new(),
            batches: Vec::new(),
            in_chunk: HashSet::new(),
        }
    }
}

/// A chunk the store committed: its batches, and its rows emptied.
pub(super) struct Stored {
    pub batches: Vec<(String, u64)>,
    pub rows: Rows,
}

/// What a chunk and its records may hold (from the sink's options).
#[derive(Debug, Clone, Copy)]
pub(super) struct ChunkLimits {
    max_rows: usize,
    max_chunk_bytes: usize,
    max_wait_ms: u64,
    decode: codec::DecodeLimits,
    window: TimeWindow,
}

impl ChunkLimits {
    pub fn of(args: &SinkArgs) -> Self {
        ChunkLimits {
            max_rows: args.max_rows,
            max_chunk_bytes: args.max_chunk_bytes,
            max_wait_ms: args.max_wait_ms,
            decode: codec::DecodeLimits {
                max_decoded_bytes: args.max_decoded_bytes,
                max_records: args.max_batch_records,
            },
            window: TimeWindow {
                max_age_us: args.max_record_age_days as i64 * 86_400_000_000,
                max_ahead_us: (args.max_clock_ahead_secs * 1_000_000) as i64,
            },
        }
    }
}

/// The consumer and the dedup memory.
///
/// A batch is skipped when the ledger or the chunk being stored holds it
/// (`seen`), or when this chunk does.
pub(super) struct Collector {
    pub consumer: Arc<GroupConsumer>,
    /// For loading a sensor's stored batches from the ledger.
    pub ch: Client,
    pub seen: SeenBatches,
    /// What the store committed, chunk by chunk.
    pub stored: mpsc::UnboundedReceiver<Stored>,
    /// Emptied rows of stored chunks, whose memory the next chunks reuse.
    pub spare: Vec<Rows>,
    /// Ingest's verify keys (`None`: unsigned envelopes accepted, by choice).
    pub verify: Option<VerifyKeys>,
    pub limits: ChunkLimits,
    pub metrics: Arc<SinkMetrics>,
    pub stop: Stop,
}

impl Collector {
    /// Hands chunks to the store, one at a time: the next chunk is
    /// collected once the store has taken the previous one, so at most two
    /// are in memory. Returns when stopping or when the store is gone.
    pub async fn run(mut self, chunks: mpsc::Sender<Chunk>) {
        loop {
            let Ok(slot) = chunks.reserve().await else {
                return;
            };
            let Some(chunk) = self.collect().await else {
                return;
            };
            self.seen.storing(&chunk.batches);
            slot.send(chunk);
        }
    }

    /// Takes in what the store committed: its batches as stored, its rows'
    /// memory for the next chunks.
    fn confirm_stored(&mut self) {
        while let Ok(Stored { batches, rows }) = self.stored.try_recv() {
            self.seen.stored(batches);
            self.spare.push(rows);
        }
    }

    /// Consumes one chunk. `None` when shutting down before anything arrived.
    async fn collect(&mut self) -> Option<Chunk> {
        self.confirm_stored();
        let mut chunk = Chunk::new(self.spare.pop().unwrap_or_default());
        // First record: wait as long as it takes.
        let first = loop {
            tokio::select! {
                m = self.consumer.recv() => match m {
                    Ok(m) => break detach(&m),
                    Err(e) => {
                        warn!(error = %e, "Kafka consume error");
                        self.stop.pause(Duration::from_millis(500)).await;
                    }
                },
                _ = self.stop.wait() => return None,
            }
        };
        self.accept(first, &mut chunk).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.limits.max_wait_ms);
        while chunk.rows.len() < self.limits.max_rows
            && chunk.bytes < self.limits.max_chunk_bytes
            && !self.stop.stopping()
        {
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
        chunk.bytes += m.payload.as_ref().map_or(0, Vec::len);
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
            kind: "batch".into(),
            signature: m.signature.clone().unwrap_or_default(),
            ..DeadLetter::default()
        };
        let Some(payload) = m.payload.as_deref() else {
            chunk.dead.push(dead("record has no value".into()));
            return;
        };
        // Only what ingest wrote: anything else on the topic (a client
        // that reached the broker, a record altered there) is refused
        // before it is even decoded.
        if let Some(keys) = &self.verify {
            if let Err(e) = keys.verify(payload, m.signature.as_deref()) {
                self.metrics.envelopes_refused.inc();
                let claimed = IngestedBatch::decode(payload).ok();
                warn!(partition = m.partition, offset = m.offset, reason = %e,
                    claimed_sensor = claimed.as_ref().map_or("", |e| e.sensor_id.as_str()),
                    "record refused: not signed by ingest; dead-lettered, never stored");
                chunk.dead.push(DeadLetter {
                    sensor_id: claimed
                        .as_ref()
                        .map(|e| e.sensor_id.clone())
                        .unwrap_or_default(),
                    seq: claimed.map_or(0, |e| e.seq),
                    ..dead(format!("envelope refused: {e}"))
                });
                return;
            }
        }
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
        let batch = match codec::decode(env.encoding, &env.payload, self.limits.decode) {
            Ok(b) => b,
            Err(e) => {
                chunk.dead.push(DeadLetter {
                    sensor_id: env.sensor_id.clone(),
                    seq: env.seq,
                    ..dead(e.to_string())
                });
                return;
            }
        };
        self.ensure_loaded(&env.sensor_id).await;
        self.confirm_stored();
        let key = (env.sensor_id.clone(), env.seq);
        if self.seen.contains(&env.sensor_id, env.seq) || chunk.in_chunk.contains(&key) {
            self.metrics.duplicates_skipped.inc();
            debug!(sensor = %env.sensor_id, seq = env.seq, "duplicate batch skipped");
            return;
        }
        // A record that cannot be stored is dead-lettered alone (its record
        // as the value), the rest of the batch is stored.
        for b in append_rows(
            &env,
            batch,
            self.limits.window,
            m.partition,
            m.offset,
            &mut chunk.rows,
        ) {
            warn!(sensor = %env.sensor_id, seq = env.seq, kind = b.kind, record = b.idx, reason = %b.reason,
                "record cannot be stored; dead-lettered, the rest of its batch is stored");
            chunk.dead.push(DeadLetter {
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
                reason: format!(
                    "{} record {} of sensor {} batch {}: {}",
                    b.kind, b.idx, env.sensor_id, env.seq, b.reason
                ),
                key: m.key.clone().unwrap_or_default(),
                value: b.value,
                failed_us: now_us(),
                kind: b.kind.into(),
                sensor_id: env.sensor_id.clone(),
                seq: env.seq,
                signature: Vec::new(),
            });
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
                .query(&format!(
                    "SELECT seq FROM {} WHERE sensor_id = ? ORDER BY seq DESC LIMIT 100000",
                    BatchRow::TABLE
                ))
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
                    if self.stop.stopping() {
                        // Nothing will be committed; dedup falls back to the schema.
                        self.seen.load(sensor, []);
                        return;
                    }
                    self.stop.pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// An owned copy of what the sink needs from a Kafka message.
struct Detached {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    /// The `tidewatch-signature` header (the last one, if repeated).
    signature: Option<Vec<u8>>,
}

fn detach(m: &BorrowedMessage<'_>) -> Detached {
    let signature = signature_of(m);
    Detached {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        signature,
    }
}
