//! The `tidewatch.v1.Uplink` service: validates each batch against the
//! sensor's certificate identity and the size limits, writes it to Kafka and
//! answers with an ack only once Kafka has confirmed delivery.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::{FuturesOrdered, StreamExt};
use prost::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tidewatch_proto::codec;
use tidewatch_proto::limits::check_flow;
use tidewatch_proto::link::{self, Kept, LinkTable};
use tidewatch_proto::util::now_us;
use tidewatch_proto::v1::signer_client::SignerClient;
use tidewatch_proto::v1::uplink_server::Uplink;
use tidewatch_proto::v1::{
    AckStatus, Encoding, IngestedBatch, RenewRequest, RenewResponse, SignRenewalRequest, UploadAck,
    UploadRequest,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::tls::{Closing, PeerInfo};
use crate::envelope::SigningKey;
use crate::identity::SensorIdentity;
use crate::metrics::IngestMetrics;

/// Limits applied to every batch.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest encoded payload accepted (the Kafka record adds ~100 bytes).
    pub max_batch_bytes: usize,
    /// Largest payload after decompression.
    pub max_decoded_bytes: usize,
    /// Largest number of records (flows + assets + status) in one batch.
    pub max_records: usize,
    /// Batches of one stream being written to Kafka at once.
    pub max_inflight_per_stream: usize,
    /// Batches decoded and checked at once (off the async runtime's
    /// threads, on the blocking pool), over every stream.
    pub decode_workers: usize,
    /// Upload streams one sensor may hold open at once.
    pub max_streams_per_sensor: usize,
    /// How long a batch may wait for room in the Kafka producer's queue.
    pub kafka_timeout: std::time::Duration,
    /// Capacity of each upload stream's link table (0: none).
    pub link_table_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_bytes: 1_000_000,
            max_decoded_bytes: codec::DecodeLimits::INGEST.max_decoded_bytes,
            max_records: codec::DecodeLimits::INGEST.max_records,
            max_inflight_per_stream: 32,
            decode_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_streams_per_sensor: 8,
            kafka_timeout: std::time::Duration::from_secs(30),
            link_table_bytes: link::DEFAULT_BYTES,
        }
    }
}

/// What a valid batch holds.
struct Checked {
    /// A linked batch self-contained again (what Kafka gets): its
    /// encoding and payload.
    resealed: Option<(i32, Vec<u8>)>,
    /// The entries a linked batch marked to keep.
    kept: Kept,
    records: u32,
    flows: u64,
    /// Flows that cannot be stored (see `limits::check_flow`).
    bad_flows: u64,
    first_bad: Option<String>,
}

/// Why a batch was refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: AckStatus,
    pub retryable: bool,
    /// Short label for counters.
    pub reason: &'static str,
    pub detail: String,
}

impl Refusal {
    fn new(status: AckStatus, reason: &'static str, detail: String) -> Self {
        Refusal {
            status,
            retryable: false,
            reason,
            detail,
        }
    }
}

struct Inner {
    /// One permit per batch being decoded ([`Limits::decode_workers`]).
    decode_slots: tokio::sync::Semaphore,
    /// Upload streams open per sensor.
    streams: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The highest seq this node saw from each sensor.
    highest_seq: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Sensors with a renewal under way (one at a time each).
    renewing: std::sync::Mutex<std::collections::HashSet<String>>,
    producer: FutureProducer,
    topic: String,
    limits: Limits,
    metrics: Arc<IngestMetrics>,
    node: String,
    /// Signs every envelope for the sink (`None`: unsigned, by choice).
    envelope_key: Option<SigningKey>,
    /// Where renewals are signed (`None`: renewal off).
    signer: Option<SignerClient<tonic::transport::Channel>>,
}

#[derive(Clone)]
pub struct IngestService {
    inner: Arc<Inner>,
    shutdown: watch::Receiver<bool>,
}

impl IngestService {
    pub fn new(
        producer: FutureProducer,
        topic: String,
        limits: Limits,
        metrics: Arc<IngestMetrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        IngestService {
            inner: Arc::new(Inner {
                decode_slots: tokio::sync::Semaphore::new(limits.decode_workers.max(1)),
                highest_seq: Default::default(),
                streams: Default::default(),
                renewing: Default::default(),
                producer,
                topic,
                limits,
                metrics,
                node: crate::kafka::node_name(),
                envelope_key: None,
                signer: None,
            }),
            shutdown,
        }
    }

    /// Signs envelopes with `key`, and renews certificates through `signer`
    /// (call before serving).
    pub fn with_trust(
        mut self,
        envelope_key: Option<SigningKey>,
        signer: Option<SignerClient<tonic::transport::Channel>>,
    ) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("not shared yet");
        inner.envelope_key = envelope_key;
        inner.signer = signer;
        self
    }
}

/// Sensors whose highest seq a node remembers (a fleet is far smaller).
const MAX_TRACKED_SENSORS: usize = 100_000;

/// A seq this far below the highest seen from its sensor is a regression:
/// sensors seed seqs from their clock (in microseconds) at every start, so
/// only a clock set back (or a reinstalled box with a wrong clock) goes
/// back a year; an old batch sent late stays well within it.
const SEQ_REGRESSION: u64 = 365 * 86_400 * 1_000_000;

impl Inner {
    /// Remembers `seq` of `sensor`; whether it is a regression (see
    /// [`SEQ_REGRESSION`]), with the highest seen.
    fn note_seq(&self, sensor: &str, seq: u64) -> Option<u64> {
        let mut m = self.highest_seq.lock().expect("seq map lock");
        match m.get_mut(sensor) {
            Some(h) if seq.saturating_add(SEQ_REGRESSION) < *h => Some(*h),
            Some(h) => {
                *h = (*h).max(seq);
                None
            }
            None => {
                if m.len() < MAX_TRACKED_SENSORS {
                    m.insert(sensor.to_string(), seq);
                }
                None
            }
        }
    }

    /// Checks one request; returns what it holds on success.
    fn validate(
        &self,
        req: &UploadRequest,
        id: &SensorIdentity,
        link: Option<&StreamLink>,
    ) -> Result<Checked, Refusal> {
        if req.payload.len() > self.limits.max_batch_bytes {
            return Err(Refusal::new(
                AckStatus::TooLarge,
                "too_large",
                format!(
                    "payload of {} bytes exceeds the limit of {} bytes; send smaller batches",
                    req.payload.len(),
                    self.limits.max_batch_bytes
                ),
            ));
        }
        if req.seq == 0 {
            return Err(Refusal::new(
                AckStatus::Malformed,
                "bad_seq",
                "seq must be at least 1".into(),
            ));
        }
        let limits = codec::DecodeLimits {
            max_decoded_bytes: self.limits.max_decoded_bytes,
            max_records: self.limits.max_records,
        };
        let refusal = |e: codec::CodecError| {
            let status = if e.is_size() {
                AckStatus::TooLarge
            } else {
                AckStatus::Malformed
            };
            Refusal::new(status, e.reason(), e.to_string())
        };
        let (batch, kept) = match link {
            Some(l) => {
                let table = l.table.read().expect("link table lock");
                codec::decode_linked(req.encoding, &req.payload, limits, &table)
            }
            None => codec::decode(req.encoding, &req.payload, limits).map(|b| (b, Kept::default())),
        }
        .map_err(refusal)?;
        if batch.seq != req.seq {
            return Err(Refusal::new(
                AckStatus::Malformed,
                "seq_mismatch",
                format!(
                    "request seq {} differs from the batch's seq {}",
                    req.seq, batch.seq
                ),
            ));
        }
        if !batch.sensor_id.is_empty() && batch.sensor_id != id.sensor_id {
            return Err(Refusal::new(
                AckStatus::Unauthorized,
                "identity_mismatch",
                format!(
                    "batch claims sensor {:?} but the client certificate is sensor {:?}",
                    batch.sensor_id, id.sensor_id
                ),
            ));
        }
        let records = batch.flows.len() + batch.assets.len() + batch.status.len();
        if records == 0 {
            return Err(Refusal::new(
                AckStatus::Empty,
                "empty",
                "batch contains no records".into(),
            ));
        }
        // Records the sink could not store: counted here and dead-lettered
        // alone there, unless no record of the batch is storable.
        let mut bad = batch
            .flows
            .iter()
            .enumerate()
            .filter_map(|(i, f)| check_flow(f).err().map(|e| (i, e)));
        let first_bad = bad.next();
        let bad_flows = first_bad.as_ref().map_or(0, |_| 1 + bad.count());
        if bad_flows == records {
            let (i, e) = first_bad.expect("records > 0");
            return Err(Refusal::new(
                AckStatus::Malformed,
                "bad_records",
                format!("no record can be stored: flow {i}: {e}"),
            ));
        }
        // Kafka holds batches every reader takes: a linked one is stored
        // self-contained, within the same size limit as any payload.
        let resealed = if req.encoding == Encoding::ColumnsLinkedZstd as i32 {
            let r = codec::encode(
                &batch,
                codec::Layout::Columns,
                Some(link::STORED_ZSTD_LEVEL),
            );
            if r.payload.len() > self.limits.max_batch_bytes {
                return Err(Refusal::new(
                    AckStatus::TooLarge,
                    "too_large",
                    format!(
                        "the batch is {} bytes self-contained, over the limit of {} bytes; send smaller batches",
                        r.payload.len(),
                        self.limits.max_batch_bytes
                    ),
                ));
            }
            Some((r.encoding, r.payload))
        } else {
            None
        };
        Ok(Checked {
            resealed,
            kept,
            records: records as u32,
            flows: batch.flows.len() as u64,
            bad_flows: bad_flows as u64,
            first_bad: first_bad.map(|(i, e)| format!("flow {i}: {e}")),
        })
    }

    async fn handle(
        self: Arc<Self>,
        req: UploadRequest,
        peer: Arc<PeerInfo>,
        turn: Turn,
        link: Option<Arc<StreamLink>>,
    ) -> (UploadAck, Kept) {
        let mut kept = Kept::default();
        let ack = self.ack(req, peer, turn, link, &mut kept).await;
        if ack.status != AckStatus::Accepted as i32 {
            kept = Kept::default();
        }
        (ack, kept)
    }

    /// Checks a batch, writes it to Kafka and answers; what a linked batch
    /// marked to keep goes to `kept`.
    async fn ack(
        self: Arc<Self>,
        req: UploadRequest,
        peer: Arc<PeerInfo>,
        turn: Turn,
        link: Option<Arc<StreamLink>>,
        kept: &mut Kept,
    ) -> UploadAck {
        let m = &self.metrics;
        m.batches_received.inc();
        m.bytes_received.add(req.payload.len() as u64);
        let id = &peer.identity;
        // Decompressing and walking a batch is CPU work: on the blocking
        // pool, a bounded number at once, never on the runtime's threads.
        let (req, checked) = {
            let _slot = self.decode_slots.acquire().await.expect("never closed");
            let inner = self.clone();
            let peer = peer.clone();
            tokio::task::spawn_blocking(move || {
                let r = inner.validate(&req, &peer.identity, link.as_deref());
                (req, r)
            })
            .await
            .expect("batch check panicked")
        };
        // Batches are checked side by side but go to Kafka in the order of
        // the stream: wait until the one before is in the producer's queue
        // (or refused).
        if let Some(prev) = turn.prev {
            let _ = prev.await;
        }
        let Checked {
            resealed,
            kept: batch_kept,
            records,
            flows,
            bad_flows,
            first_bad,
        } = match checked {
            Ok(c) => c,
            Err(r) => {
                m.refused.inc(r.reason);
                warn!(peer = %peer.remote, sensor = %id.sensor_id, seq = req.seq, status = %r.status.as_str_name(),
                    reason = %r.reason, detail = %r.detail, "batch refused");
                return UploadAck {
                    seq: req.seq,
                    status: r.status as i32,
                    retryable: r.retryable,
                    detail: r.detail,
                    records: 0,
                };
            }
        };
        // A connection closed meanwhile (its certificate revoked): nothing
        // more it sent goes to Kafka.
        if let Closing::Closed(why) = *peer.closing.borrow() {
            m.refused.inc("revoked");
            return UploadAck {
                seq: req.seq,
                status: AckStatus::Unauthorized as i32,
                retryable: true,
                detail: format!("connection closed by ingest: {why}"),
                records: 0,
            };
        }
        if let Some(highest) = self.note_seq(&id.sensor_id, req.seq) {
            m.seq_regressions.inc();
            warn!(sensor = %id.sensor_id, seq = req.seq, highest, "seq regression: far below the highest seq \
                this sensor sent (its clock was set back, or it was reinstalled with a wrong clock); \
                batches reusing stored seqs are dropped ashore as duplicates");
        }
        *kept = batch_kept;
        let received_us = now_us();
        let (encoding, payload) = resealed.unwrap_or((req.encoding, req.payload));
        let envelope = IngestedBatch {
            sensor_id: id.sensor_id.clone(),
            vessel: id.vessel.clone(),
            seq: req.seq,
            received_us,
            encoding,
            payload,
            ingest_node: self.node.clone(),
        }
        .encode_to_vec();
        let seq_text = req.seq.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "tidewatch-sensor",
                value: Some(id.sensor_id.as_bytes()),
            })
            .insert(Header {
                key: "tidewatch-seq",
                value: Some(seq_text.as_bytes()),
            });
        let signature = self.envelope_key.as_ref().map(|k| k.sign(&envelope));
        if let Some(sig) = &signature {
            headers = headers.insert(Header {
                key: crate::envelope::SIGNATURE_HEADER,
                value: Some(sig.as_slice()),
            });
        }
        let record = FutureRecord::to(&self.topic)
            .key(id.sensor_id.as_bytes())
            .payload(&envelope)
            .headers(headers);
        m.flows_received.add(flows);
        // Bounded by the producer's message.timeout.ms.
        let started = std::time::Instant::now();
        // Waits for room in the producer's bounded queue at most this long.
        let deadline = started + self.limits.kafka_timeout;
        let mut record = record;
        let queued = loop {
            match self.producer.send_result(record) {
                Ok(delivery) => break Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if std::time::Instant::now() < deadline =>
                {
                    record = r;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err((e, _)) => break Err(e),
            }
        };
        // In the queue (or not): the next batch of the stream may go.
        drop(turn.mine);
        let sent = match queued {
            Ok(delivery) => match delivery.await {
                Ok(Ok(d)) => Ok(d),
                Ok(Err((e, _))) => Err(e),
                Err(_) => Err(KafkaError::Canceled),
            },
            Err(e) => Err(e),
        };
        m.kafka_produce.observe_duration(started.elapsed());
        match sent {
            Ok(delivery) => {
                m.batches_acked.inc();
                m.batches_acked_by_encoding
                    .inc(codec::encoding_label(req.encoding));
                m.records_acked.add(records as u64);
                m.flows_acked.add(flows);
                debug!(sensor = %id.sensor_id, seq = req.seq, records, ?delivery, "batch in Kafka");
                let detail = match first_bad {
                    Some(first) => {
                        m.bad_records.add(bad_flows);
                        warn!(sensor = %id.sensor_id, seq = req.seq, bad_flows, %first,
                            "batch has flow records that cannot be stored; they will be dead-lettered");
                        format!("{bad_flows} flow record(s) cannot be stored and are dead-lettered; first: {first}")
                    }
                    None => String::new(),
                };
                UploadAck {
                    seq: req.seq,
                    status: AckStatus::Accepted as i32,
                    retryable: false,
                    detail,
                    records: records - bad_flows as u32,
                }
            }
            Err(e) => {
                let full = matches!(
                    e,
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                );
                m.refused.inc(if full {
                    "kafka_queue_full"
                } else {
                    "kafka_unavailable"
                });
                warn!(sensor = %id.sensor_id, seq = req.seq, error = %e, "Kafka did not take the batch; sensor will retry");
                UploadAck {
                    seq: req.seq,
                    status: AckStatus::Unavailable as i32,
                    retryable: true,
                    detail: format!("Kafka unavailable: {e}"),
                    records: 0,
                }
            }
        }
    }
}

/// A batch's place in its stream's order to Kafka: it waits for `prev`
/// (the batch before it is queued in the producer, or refused), and drops
/// `mine` once it is queued itself.
struct Turn {
    prev: Option<oneshot::Receiver<()>>,
    mine: oneshot::Sender<()>,
}

/// An open upload stream, counted (in total and for its sensor) for as
/// long as it lives.
struct OpenStream {
    inner: Arc<Inner>,
    sensor: String,
}

impl OpenStream {
    /// Counts a new stream of `sensor`, or `None` if the sensor already
    /// holds its limit of streams.
    fn open(inner: Arc<Inner>, sensor: &str) -> Option<OpenStream> {
        {
            let mut m = inner.streams.lock().expect("stream map lock");
            let n = m.entry(sensor.to_string()).or_insert(0);
            if *n >= inner.limits.max_streams_per_sensor {
                return None;
            }
            *n += 1;
        }
        inner.metrics.streams_open.add(1.0);
        Some(OpenStream {
            inner,
            sensor: sensor.to_string(),
        })
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut m = self.inner.streams.lock().expect("stream map lock");
        if let Some(n) = m.get_mut(&self.sensor) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.sensor);
            }
        }
        self.inner.metrics.streams_open.add(-1.0);
    }
}

/// A batch's ack, with the entries it marked to keep (appended to the
/// stream's link table if the ack accepts it).
type AckFuture = Pin<Box<dyn Future<Output = (UploadAck, Kept)> + Send>>;

/// An upload stream's link table (see [`tidewatch_proto::link`]): read by
/// the batches being checked, appended to as each one is accepted.
struct StreamLink {
    table: std::sync::RwLock<LinkTable>,
    metrics: Arc<IngestMetrics>,
}

impl StreamLink {
    fn new(max_bytes: usize, metrics: Arc<IngestMetrics>) -> Self {
        StreamLink {
            table: std::sync::RwLock::new(LinkTable::new(max_bytes)),
            metrics,
        }
    }

    /// Appends what an accepted batch kept, before its ack goes out: the
    /// sensor refers to these entries only once it has that ack. (A batch
    /// being checked holds the table for reading for as long as that
    /// takes: milliseconds.)
    fn accepted(&self, kept: &Kept) {
        if kept.is_empty() {
            return;
        }
        let mut t = self.table.write().expect("link table lock");
        let before = t.bytes();
        t.append(kept);
        self.metrics
            .link_table_bytes
            .add((t.bytes() - before) as f64);
    }
}

impl Drop for StreamLink {
    fn drop(&mut self) {
        let held = self.table.get_mut().map_or(0, |t| t.bytes());
        self.metrics.link_table_bytes.add(-(held as f64));
    }
}

/// The status that ends a stream on a connection ingest is ending.
fn closing_status(c: Closing) -> Result<(), Status> {
    match c {
        Closing::Open => Ok(()),
        Closing::Draining(why) => Err(Status::unavailable(format!(
            "connection drained ({why}); reconnect"
        ))),
        Closing::Closed(why) => Err(Status::permission_denied(format!(
            "connection closed by ingest: {why}"
        ))),
    }
}

/// Largest CSR a renewal may carry.
const MAX_CSR_BYTES: usize = 16 * 1024;

impl Inner {
    /// Forwards a sensor's renewal to the signer, for the certificate it
    /// is connected with (one renewal per sensor at a time).
    async fn renew(&self, peer: &PeerInfo, csr: Vec<u8>) -> Result<RenewResponse, Status> {
        let m = &self.metrics;
        let id = &peer.identity;
        let Some(mut signer) = self.signer.clone() else {
            m.renewals.inc("disabled");
            return Err(Status::unimplemented(
                "this collector does not renew certificates (ingest has no --signer); re-enroll the sensor before expiry",
            ));
        };
        if csr.len() > MAX_CSR_BYTES {
            m.renewals.inc("refused");
            return Err(Status::invalid_argument(format!(
                "CSR of {} bytes (at most {MAX_CSR_BYTES})",
                csr.len()
            )));
        }
        if !self
            .renewing
            .lock()
            .expect("renewal set lock")
            .insert(id.sensor_id.clone())
        {
            m.renewals.inc("busy");
            return Err(Status::resource_exhausted(
                "a renewal of this sensor is already under way",
            ));
        }
        let req = SignRenewalRequest {
            presented_certificate: peer.certificate.to_vec(),
            csr,
        };
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), signer.sign_renewal(req))
            .await;
        self.renewing
            .lock()
            .expect("renewal set lock")
            .remove(&id.sensor_id);
        match r {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                m.renewals.inc("issued");
                info!(sensor = %id.sensor_id, old_serial = %id.serial, not_after = resp.not_after,
                    "sensor certificate renewed");
                Ok(resp)
            }
            Ok(Err(s))
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                ) =>
            {
                m.renewals.inc("refused");
                warn!(sensor = %id.sensor_id, serial = %id.serial, reason = %s.message(), "renewal refused by the signer");
                Err(s)
            }
            Ok(Err(s)) => {
                m.renewals.inc("signer_unavailable");
                warn!(sensor = %id.sensor_id, code = ?s.code(), error = %s.message(), "signer unavailable; the sensor will retry");
                Err(Status::unavailable(format!(
                    "signer unavailable: {}",
                    s.message()
                )))
            }
            Err(_) => {
                m.renewals.inc("signer_unavailable");
                warn!(sensor = %id.sensor_id, "signer did not answer within 20 s; the sensor will retry");
                Err(Status::unavailable("signer did not answer in time"))
            }
        }
    }
}

#[tonic::async_trait]
impl Uplink for IngestService {
    type UploadStream = ReceiverStream<Result<UploadAck, Status>>;

    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<Self::UploadStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no verified client certificate"))?;
        let peer = Arc::new(peer);
        if *self.shutdown.borrow() {
            return Err(Status::unavailable("collector is shutting down"));
        }
        closing_status(*peer.closing.borrow())?;
        let Some(open) = OpenStream::open(self.inner.clone(), &peer.identity.sensor_id) else {
            self.inner.metrics.refused.inc("sensor_stream_limit");
            warn!(peer = %peer.remote, sensor = %peer.identity.sensor_id,
                "upload stream refused: this sensor holds its limit of open streams");
            return Err(Status::resource_exhausted(
                "this sensor already holds its limit of open upload streams; retry later",
            ));
        };
        let mut inbound = request.into_inner();
        let inner = self.inner.clone();
        let mut shutdown = self.shutdown.clone();
        let mut closing = peer.closing.clone();
        let max_inflight = inner.limits.max_inflight_per_stream.max(1);
        let (tx, rx) = mpsc::channel(max_inflight + 1);
        let link = (inner.limits.link_table_bytes > 0).then(|| {
            Arc::new(StreamLink::new(
                inner.limits.link_table_bytes,
                inner.metrics.clone(),
            ))
        });
        info!(peer = %peer.remote, sensor = %peer.identity.sensor_id, vessel = %peer.identity.vessel, "upload stream opened");
        tokio::spawn(async move {
            let _open = open;
            let mut inflight: FuturesOrdered<AckFuture> = FuturesOrdered::new();
            let mut last_turn: Option<oneshot::Receiver<()>> = None;
            let mut reading = true;
            let mut final_status: Option<Status> = None;
            loop {
                if !reading && inflight.is_empty() {
                    break;
                }
                tokio::select! {
                    biased;
                    Some((ack, kept)) = inflight.next(), if !inflight.is_empty() => {
                        if let Some(link) = &link {
                            link.accepted(&kept);
                        }
                        if tx.send(Ok(ack)).await.is_err() {
                            // Sensor went away; unacked batches will be resent.
                            return;
                        }
                    }
                    r = shutdown.changed(), if reading => {
                        if r.is_err() || *shutdown.borrow() {
                            reading = false;
                            final_status = Some(Status::unavailable("collector is shutting down; reconnect"));
                        }
                    }
                    r = closing.changed(), if reading => {
                        let now = *closing.borrow_and_update();
                        if let Err(s) = closing_status(now) {
                            reading = false;
                            final_status = Some(s);
                        } else if r.is_err() {
                            // The connection is gone.
                            reading = false;
                        }
                    }
                    m = inbound.message(), if reading && inflight.len() < max_inflight => match m {
                        Ok(Some(req)) => {
                            let (mine, next) = oneshot::channel();
                            let turn = Turn { prev: last_turn.replace(next), mine };
                            inflight.push_back(Box::pin(inner.clone().handle(req, peer.clone(), turn, link.clone())));
                        }
                        Ok(None) => reading = false,
                        Err(status) => {
                            inner.metrics.refused.inc("bad_grpc_message");
                            warn!(peer = %peer.remote, sensor = %peer.identity.sensor_id, code = ?status.code(),
                                message = %status.message(), "upload stream broken by an invalid message");
                            reading = false;
                            final_status = Some(status);
                        }
                    }
                }
            }
            // Every batch is answered: the table is given back.
            drop(link);
            if let Some(s) = final_status {
                let _ = tx.send(Err(s)).await;
            }
            debug!(peer = %peer.remote, "upload stream closed");
        });
        let mut response = Response::new(ReceiverStream::new(rx));
        if self.inner.limits.link_table_bytes > 0 {
            let bytes = self.inner.limits.link_table_bytes.to_string();
            response.metadata_mut().insert(
                link::HEADER,
                bytes.parse().expect("digits are a valid header value"),
            );
        }
        Ok(response)
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no verified client certificate"))?;
        closing_status(*peer.closing.borrow())?;
        let csr = request.into_inner().csr;
        self.inner.renew(&peer, csr).await.map(Response::new)
    }
}
