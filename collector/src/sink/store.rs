//! The sink's storing side ([`Store`]): one chunk at a time, dead letters →
//! insert rows → insert the ledger → commit offsets (steps 3 and 4 of the
//! loop in the module docs of [`super`]); the chunks come from the
//! collector (`collect.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Client;
use prost::Message as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tidewatch_proto::util::now_us;
use tidewatch_proto::v1::DeadLetter;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::collect::{Chunk, Stored};
use super::rows::{
    rollups, AssetRow, BatchRow, DestHourlyRow, FlowRow, InsertOrder, StatusRow, Table,
    TrafficHourlyRow,
};
use super::SinkArgs;
use crate::kafka::GroupConsumer;
use crate::metrics::SinkMetrics;
use crate::metrics::Stop;

/// One sink process's ClickHouse client, dead-letter producer and the
/// consumer it commits offsets through.
pub(super) struct Store {
    pub args: SinkArgs,
    pub consumer: Arc<GroupConsumer>,
    pub dlq: FutureProducer,
    pub ch: Client,
    pub metrics: Arc<SinkMetrics>,
    pub stop: Stop,
    /// Set when fault injection stopped the sink.
    pub fault_exit: bool,
}

impl Store {
    pub fn log(&self, what: &'static str) {
        let m = &self.metrics;
        info!(
            records = m.kafka_records.get(),
            batches = m.batches_stored.get(),
            flows = m.rows_inserted.get(FlowRow::TABLE),
            duplicates_skipped = m.duplicates_skipped.get(),
            dead_lettered = m.dead_lettered.get(),
            insert_retries = m.insert_retries.get(),
            "{what}"
        );
    }

    /// Stores the collector's chunks in order, and tells it which batches
    /// each committed. Returns when stopping, when a chunk could not be
    /// stored (stopping, or fault injection), or when the collector is gone.
    pub async fn run(
        &mut self,
        mut chunks: mpsc::Receiver<Chunk>,
        stored: mpsc::UnboundedSender<Stored>,
    ) {
        let mut last_log = Instant::now();
        while !self.stop.stopping() {
            let stop = self.stop.clone();
            let chunk = tokio::select! {
                c = chunks.recv() => c,
                _ = stop.wait() => None,
            };
            let Some(mut chunk) = chunk else {
                break;
            };
            if !self.store(&mut chunk).await {
                break; // shutting down before the chunk was stored: not committed
            }
            chunk.rows.clear();
            let _ = stored.send(Stored {
                batches: chunk.batches,
                rows: chunk.rows,
            });
            if last_log.elapsed() > Duration::from_secs(30) {
                self.log("sink progress");
                last_log = Instant::now();
            }
        }
    }

    /// Waits until ClickHouse answers and the schema exists.
    pub async fn wait_for_schema(&mut self) {
        let mut logged = false;
        while !self.stop.stopping() {
            let r: Result<u64, _> = self
                .ch
                .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
                .bind(&self.args.clickhouse.clickhouse_database)
                .bind(FlowRow::TABLE)
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
            self.stop.pause(Duration::from_secs(1)).await;
        }
    }

    /// Dead letters, inserts, ledger, commit. Returns false if interrupted by
    /// shutdown before the offsets were committed.
    async fn store(&mut self, chunk: &mut Chunk) -> bool {
        let rows = chunk.rows.in_insert_order();
        for d in &chunk.dead {
            if !self.dead_letter(d).await {
                return false;
            }
        }
        let n_rows = rows.flows.len() + rows.assets.len() + rows.statuses.len();
        let started = Instant::now();
        let Some(refused) = self.insert_chunk_rows(&rows).await else {
            return false;
        };
        for d in &refused {
            if !self.dead_letter(d).await {
                return false;
            }
        }
        if self.args.fault_exit_after_insert {
            error!(
                rows = n_rows,
                "fault injection: exiting after insert, before ledger and commit"
            );
            self.fault_exit = true;
            return false;
        }
        if !self.insert_ledger(&rows.batches).await {
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
        let m = &self.metrics;
        m.batches_stored.add(chunk.batches.len() as u64);
        m.rows_inserted.add(FlowRow::TABLE, rows.flows.len() as u64);
        m.rows_inserted
            .add(AssetRow::TABLE, rows.assets.len() as u64);
        m.rows_inserted
            .add(StatusRow::TABLE, rows.statuses.len() as u64);
        m.rows_inserted
            .add(BatchRow::TABLE, rows.batches.len() as u64);

        debug!(
            rows = n_rows,
            batches = chunk.batches.len(),
            dead = chunk.dead.len(),
            ms = started.elapsed().as_millis() as u64,
            "chunk stored and committed"
        );
        true
    }

    /// Inserts a chunk's rows, table by table. A transient error (the
    /// server away, overloaded, the schema not there yet) is retried with
    /// backoff; a permanent one (ClickHouse refuses the data itself) is
    /// narrowed down by halving the rows until the refused ones are found,
    /// and those come back (for the dead-letter topic) while every other row
    /// is stored. `None` if told to stop first.
    async fn insert_chunk_rows(&mut self, rows: &InsertOrder<'_>) -> Option<Vec<DeadLetter>> {
        let mut refused = Vec::new();
        let bad = self.isolate(&rows.flows, &mut refused).await?;
        // The hourly rollups of the flows stored, per batch (a batch stored
        // again writes the same rows, which collapse).
        let (traffic, dest) = rollups(
            rows.flows
                .iter()
                .enumerate()
                .filter(|(i, _)| !bad.contains(i))
                .map(|(_, f)| *f),
        );
        self.isolate(&traffic.iter().collect::<Vec<_>>(), &mut refused)
            .await?;
        self.isolate(&dest.iter().collect::<Vec<_>>(), &mut refused)
            .await?;
        let m = &self.metrics;
        m.rows_inserted
            .add(TrafficHourlyRow::TABLE, traffic.len() as u64);
        m.rows_inserted.add(DestHourlyRow::TABLE, dest.len() as u64);
        self.isolate(&rows.assets, &mut refused).await?;
        self.isolate(&rows.statuses, &mut refused).await?;
        Some(refused)
    }

    /// Inserts `rows`, isolating the ones refused for good (see
    /// [`Self::insert_chunk_rows`]): halves of a refused range are tried
    /// until single rows are left. The indexes of the refused rows; `None`
    /// if told to stop first.
    async fn isolate<T>(
        &mut self,
        rows: &[&T],
        refused: &mut Vec<DeadLetter>,
    ) -> Option<std::collections::BTreeSet<usize>>
    where
        T: Table + RowOrigin + clickhouse::Row + clickhouse::RowWrite + serde::Serialize,
        for<'b> T: clickhouse::Row<Value<'b> = T>,
    {
        let mut bad = Vec::new();
        // Ranges still to insert; halves of a refused range go back on it.
        let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
        todo.push(0..rows.len());
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            match self.insert_with_retry(&rows[range.clone()]).await? {
                Ok(()) => {}
                Err(e) if range.len() == 1 => bad.push((range.start, e)),
                Err(e) => {
                    warn!(table = T::TABLE, rows = range.len(), error = %e,
                        "ClickHouse refused the insert for good; halving it to find the refused rows");
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
            }
        }
        let indexes = bad.iter().map(|(i, _)| *i).collect();
        for (i, e) in bad {
            let row = rows[i];
            self.metrics.rows_refused.inc();
            error!(table = T::TABLE, sensor = row.sensor(), seq = row.batch_seq(), error = %e,
                "ClickHouse refused a row for good; dead-lettered, the rest is stored");
            refused.push(DeadLetter {
                topic: self.args.kafka.kafka_topic.clone(),
                partition: -1,
                offset: -1,
                reason: format!(
                    "ClickHouse refused this {} row of sensor {} batch {}: {e}",
                    T::TABLE,
                    row.sensor(),
                    row.batch_seq()
                ),
                key: row.sensor().as_bytes().to_vec(),
                value: serde_json::to_vec(row).unwrap_or_default(),
                failed_us: now_us(),
                kind: "row".into(),
                sensor_id: row.sensor().to_string(),
                seq: row.batch_seq(),
                signature: Vec::new(),
            });
        }
        Some(indexes)
    }

    /// Inserts `rows`, retrying transient errors with backoff. `None` if
    /// told to stop first; `Some(Err)` for an error retrying cannot fix.
    async fn insert_with_retry<T>(
        &mut self,
        rows: &[&T],
    ) -> Option<Result<(), clickhouse::error::Error>>
    where
        T: Table + clickhouse::Row + clickhouse::RowWrite + serde::Serialize,
        for<'b> T: clickhouse::Row<Value<'b> = T>,
    {
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0u32;
        loop {
            let t0 = Instant::now();
            match insert_table(&self.ch, rows).await {
                Ok(()) => {
                    self.metrics.insert_seconds.observe_duration(t0.elapsed());
                    if attempt > 0 {
                        info!(
                            table = T::TABLE,
                            attempts = attempt + 1,
                            "ClickHouse insert succeeded after retries"
                        );
                    }
                    return Some(Ok(()));
                }
                Err(e) if is_permanent(&e) => return Some(Err(e)),
                Err(e) => {
                    attempt += 1;
                    self.metrics.insert_retries.inc();
                    warn!(table = T::TABLE, attempt, error = %e, retry_in = ?backoff, "ClickHouse insert failed; offsets stay uncommitted");
                    if self.stop.stopping() {
                        return None;
                    }
                    self.stop.pause(backoff).await;
                    if self.stop.stopping() {
                        return None;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Inserts the ledger rows until they are in (the ledger is ours: even
    /// an error that looks permanent is retried, slowly). False if told to
    /// stop first.
    async fn insert_ledger(&mut self, rows: &[&BatchRow]) -> bool {
        loop {
            match self.insert_with_retry(rows).await {
                None => return false,
                Some(Ok(())) => return true,
                Some(Err(e)) => {
                    error!(error = %e, "ClickHouse refused the ledger rows; retrying in 5 s");
                    self.stop.pause(Duration::from_secs(5)).await;
                    if self.stop.stopping() {
                        return false;
                    }
                }
            }
        }
    }

    async fn dead_letter(&mut self, d: &DeadLetter) -> bool {
        warn!(topic = %d.topic, partition = d.partition, offset = d.offset, reason = %d.reason,
            "record sent to the dead-letter topic");
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
                    if self.stop.stopping() {
                        return false;
                    }
                    self.stop.pause(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// ClickHouse error codes that mean the data itself is refused: retrying
/// the same rows cannot succeed. Every other error (network, timeouts,
/// overload, read-only replica, a schema not migrated yet) is retried.
const PERMANENT_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    128, // TOO_LARGE_ARRAY_SIZE
    131, // TOO_LARGE_STRING_SIZE
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    469, // VIOLATED_CONSTRAINT
];

/// Whether ClickHouse refused the data itself (see [`PERMANENT_CODES`]).
fn is_permanent(e: &clickhouse::error::Error) -> bool {
    let clickhouse::error::Error::BadResponse(text) = e else {
        return false;
    };
    error_code(text).is_some_and(|c| PERMANENT_CODES.contains(&c))
}

/// The code of a ClickHouse exception text ("Code: 395, e.displayText() ...").
fn error_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// Where a row came from, for the dead-letter reason.
trait RowOrigin {
    fn sensor(&self) -> &str;
    fn batch_seq(&self) -> u64;
}

macro_rules! row_origin {
    ($($t:ty),*) => {$(
        impl RowOrigin for $t {
            fn sensor(&self) -> &str {
                &self.sensor_id
            }
            fn batch_seq(&self) -> u64 {
                self.batch_seq
            }
        }
    )*};
}
row_origin!(
    FlowRow,
    TrafficHourlyRow,
    DestHourlyRow,
    AssetRow,
    StatusRow
);

/// Days of data (partitions) in one insert at most: modern servers refuse
/// an insert block that touches more than 100 partitions
/// (`max_partitions_per_insert_block`), which a replayed archive or a sensor
/// whose clock jumped would otherwise reach, stalling the partition.
pub const MAX_DAYS_PER_INSERT: usize = 50;

/// Inserts `rows` into their table: one insert per [`MAX_DAYS_PER_INSERT`]
/// days of their data (usually one), nothing when empty. All rows of one
/// day, so of one batch and hour, go in the same insert: the hourly
/// rollups (one row per batch, hour and destination, from each insert)
/// stay whole.
async fn insert_table<T>(ch: &Client, rows: &[&T]) -> Result<(), clickhouse::error::Error>
where
    T: Table + clickhouse::Row + clickhouse::RowWrite + serde::Serialize,
    for<'b> T: clickhouse::Row<Value<'b> = T>,
{
    for part in by_days(rows, MAX_DAYS_PER_INSERT) {
        let mut ins = ch.insert::<T>(<T as Table>::TABLE).await?.with_timeouts(
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(120)),
        );
        for r in part {
            ins.write(r).await?;
        }
        ins.end().await?;
    }
    Ok(())
}

/// `rows` cut into groups of at most `max_days` distinct days each, in
/// order of day; each row in exactly one group.
fn by_days<'a, T: Table>(rows: &[&'a T], max_days: usize) -> Vec<Vec<&'a T>> {
    let mut days: Vec<i64> = rows.iter().map(|r| r.day()).collect();
    days.sort_unstable();
    days.dedup();
    if days.len() <= max_days {
        return if rows.is_empty() {
            Vec::new()
        } else {
            vec![rows.to_vec()]
        };
    }
    let group_of = |d: i64| days.binary_search(&d).expect("listed") / max_days;
    let mut groups: Vec<Vec<&T>> = vec![Vec::new(); days.len().div_ceil(max_days)];
    for &r in rows {
        groups[group_of(r.day())].push(r);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(i64);
    impl Table for R {
        const TABLE: &'static str = "t";
        fn day(&self) -> i64 {
            self.0
        }
    }

    #[test]
    fn data_errors_are_permanent_everything_else_is_retried() {
        let bad = |t: &str| clickhouse::error::Error::BadResponse(t.to_string());
        assert!(is_permanent(&bad(
            "Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero"
        )));
        assert!(is_permanent(&bad("Code: 53. DB::Exception: Type mismatch")));
        for transient in [
            "Code: 252, e.displayText() = DB::Exception: Too many parts",
            "Code: 60, e.displayText() = DB::Exception: Table tidewatch.flows_raw doesn't exist",
            "Code: 242. DB::Exception: Table is in readonly mode",
            "no code at all",
        ] {
            assert!(!is_permanent(&bad(transient)), "{transient}");
        }
        assert_eq!(error_code("Code: 16, e.displayText()"), Some(16));
    }

    #[test]
    fn inserts_are_cut_by_days_keeping_each_day_whole() {
        assert!(by_days::<R>(&[], 50).is_empty());
        // 300 days, three rows each, out of order.
        let rows: Vec<R> = (0..900).map(|i| R((i * 7) % 300)).collect();
        let rows: Vec<&R> = rows.iter().collect();
        let groups = by_days(&rows, 50);
        assert_eq!(groups.len(), 6);
        let mut seen = std::collections::BTreeMap::new();
        for (g, rows) in groups.iter().enumerate() {
            let days: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.0).collect();
            assert!(days.len() <= 50);
            for d in days {
                assert!(seen.insert(d, g).is_none(), "day {d} in two inserts");
            }
        }
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 900);
        // Within the limit: one insert.
        assert_eq!(by_days(&rows[..10], 50).len(), 1);
    }
}
