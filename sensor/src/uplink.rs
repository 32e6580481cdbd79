//! The uplink: streams batches to the collector over mutually authenticated
//! gRPC and forgets a batch only when the collector has acked it (an ack
//! means "durably in Kafka").
//!
//! Up to `window` batches are in flight on one stream. Acks come back in
//! request order. On any failure (connect error, stream reset, a retryable
//! negative ack, no ack within `ack_timeout`) the stream is dropped and, after
//! an exponential backoff with jitter, a new one resends every unacked batch
//! from the first. The shore drops the duplicates this creates. HTTP/2
//! keepalive pings detect a link that silently drops everything.
//!
//! A batch the collector refuses for good (too large, malformed) is reported
//! as [`Done::Refused`] with the batch, for the forwarder to split or set
//! aside: it never blocks the batches behind it. A stream broken because a
//! request exceeded the collector's gRPC message limit teaches the uplink a
//! size limit (below the largest batch then in flight, which was over it):
//! a batch above it is refused here once it is the oldest unacked, without
//! being sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tidewatch_proto::metrics::{Counter, Gauge};
use tidewatch_proto::v1::uplink_client::UplinkClient;
use tidewatch_proto::v1::{AckStatus, UploadAck, UploadRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use tracing::{debug, info, warn};

use crate::batch::{PreparedBatch, Priority};
use crate::budget::DailyBudget;
use crate::ratelimit::TokenBucket;

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// `https://host:port` of the collector's ingest.
    pub endpoint: String,
    /// Name the collector's certificate must carry (defaults to the host).
    pub server_name: Option<String>,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub window: usize,
    pub connect_timeout: Duration,
    pub ack_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Upload rate limit in bytes per second (batch payloads), 0 = none.
    pub rate_limit: u64,
}

/// Live counters of the uplink (shared with the metrics endpoint).
#[derive(Debug, Default)]
pub struct UplinkCounters {
    pub batches_acked: Counter,
    pub flows_acked: Counter,
    pub batches_rejected: Counter,
    pub flows_rejected: Counter,
    pub resent: Counter,
    pub reconnects: Counter,
    pub bytes_sent: Counter,
    /// 1 while an upload stream is open.
    pub connected: Gauge,
}

impl UplinkCounters {
    pub fn snapshot(&self) -> UplinkStats {
        UplinkStats {
            batches_acked: self.batches_acked.get(),
            flows_acked: self.flows_acked.get(),
            batches_rejected: self.batches_rejected.get(),
            flows_rejected: self.flows_rejected.get(),
            resent: self.resent.get(),
            reconnects: self.reconnects.get(),
            bytes_sent: self.bytes_sent.get(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct UplinkStats {
    pub batches_acked: u64,
    pub flows_acked: u64,
    pub batches_rejected: u64,
    pub flows_rejected: u64,
    pub resent: u64,
    pub reconnects: u64,
    /// Batch payload bytes handed to the link (resends included).
    pub bytes_sent: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("invalid collector endpoint {0:?}: {1}")]
    Endpoint(String, String),
}

enum StreamEnd {
    /// Source exhausted and everything acked.
    Done,
    /// Stream broke; reconnect and resend.
    Retry(String),
}

/// A batch the uplink is done with, reported in order.
#[derive(Debug)]
pub enum Done {
    /// The collector acked it (it is in Kafka).
    Acked { class: Priority, seq: u64 },
    /// The collector refused it for good, or it is over the size the
    /// collector takes (then `status` is `TooLarge`).
    Refused {
        batch: PreparedBatch,
        status: AckStatus,
        detail: String,
    },
}

pub struct Uplink {
    cfg: UplinkConfig,
    endpoint: Endpoint,
    counters: Arc<UplinkCounters>,
    /// Receives every batch the uplink is done with, in order.
    done: Option<mpsc::UnboundedSender<Done>>,
    /// Learned from a stream broken by the collector's message limit:
    /// larger payloads are not sent.
    max_send: usize,
    /// Charged for every send (batches are reserved against it by whoever
    /// hands them over, which is where the budget holds them back).
    budget: Option<Arc<Mutex<DailyBudget>>>,
    bucket: Option<TokenBucket>,
}

impl Uplink {
    pub fn new(cfg: UplinkConfig) -> Result<Self, UplinkError> {
        let bad =
            |e: &dyn std::fmt::Display| UplinkError::Endpoint(cfg.endpoint.clone(), e.to_string());
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&cfg.ca_pem))
            .identity(Identity::from_pem(&cfg.cert_pem, &cfg.key_pem));
        if let Some(name) = &cfg.server_name {
            tls = tls.domain_name(name.clone());
        }
        let endpoint = Endpoint::from_shared(cfg.endpoint.clone())
            .map_err(|e| bad(&e))?
            .tls_config(tls)
            .map_err(|e| bad(&e))?
            .connect_timeout(cfg.connect_timeout)
            .http2_keep_alive_interval(cfg.keepalive_interval)
            .keep_alive_timeout(cfg.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let bucket = (cfg.rate_limit > 0)
            .then(|| TokenBucket::new(cfg.rate_limit, std::time::Instant::now()));
        Ok(Uplink {
            cfg,
            endpoint,
            counters: Arc::default(),
            done: None,
            max_send: usize::MAX,
            budget: None,
            bucket,
        })
    }

    /// Reports finished batches (acked or refused for good) on `tx`.
    pub fn with_done_channel(mut self, tx: mpsc::UnboundedSender<Done>) -> Self {
        self.done = Some(tx);
        self
    }

    /// Charges what goes on the link to `b`.
    pub fn with_budget(mut self, b: Arc<Mutex<DailyBudget>>) -> Self {
        self.budget = Some(b);
        self
    }

    /// Counts into `c` (shared with whoever reports them).
    pub fn with_counters(mut self, c: Arc<UplinkCounters>) -> Self {
        self.counters = c;
        self
    }

    /// Uploads every batch of `batches` and returns once all are acked.
    pub async fn upload_all(self, batches: Vec<PreparedBatch>) -> UplinkStats {
        let (tx, rx) = mpsc::channel(batches.len().max(1));
        for b in batches {
            let _ = tx.try_send(b);
        }
        drop(tx);
        self.run(rx).await
    }

    /// Uploads every batch from `source` until it closes and all are acked.
    pub async fn run(mut self, mut source: mpsc::Receiver<PreparedBatch>) -> UplinkStats {
        let mut unacked: VecDeque<PreparedBatch> = VecDeque::new();
        let mut source_done = false;
        let mut backoff = self.cfg.backoff_initial;
        let mut first = true;
        loop {
            if source_done && unacked.is_empty() {
                return self.counters.snapshot();
            }
            if !first {
                self.counters.reconnects.inc();
                let jitter = rand::rng().random_range(0.5..1.5);
                let wait = backoff.mul_f64(jitter);
                debug!(?wait, "backing off before reconnecting");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(self.cfg.backoff_max);
            }
            first = false;
            self.wait_for_budget(&unacked).await;
            let channel = match self.endpoint.connect().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(endpoint = %self.cfg.endpoint, error = %error_chain(&e), "cannot connect to collector");
                    continue;
                }
            };
            self.counters.connected.set(1.0);
            let end = self
                .stream(
                    channel,
                    &mut unacked,
                    &mut source,
                    &mut source_done,
                    &mut backoff,
                )
                .await;
            self.counters.connected.set(0.0);
            match end {
                StreamEnd::Done => return self.counters.snapshot(),
                StreamEnd::Retry(why) => {
                    warn!(unacked = unacked.len(), reason = %why, "upload stream interrupted; will resend unacked batches")
                }
            }
        }
    }

    async fn stream(
        &mut self,
        channel: Channel,
        unacked: &mut VecDeque<PreparedBatch>,
        source: &mut mpsc::Receiver<PreparedBatch>,
        source_done: &mut bool,
        backoff: &mut Duration,
    ) -> StreamEnd {
        let window = self.cfg.window.max(1);
        let (tx, rx) = mpsc::channel::<UploadRequest>(window);
        let mut sent = 0usize;
        self.refuse_oversized_head(unacked);
        // Queue the resends before opening the stream.
        while sent < unacked.len()
            && sent < window
            && self.fits(&unacked[sent])
            && self.budget_allows(&unacked[sent])
        {
            if unacked[sent].sent {
                self.counters.resent.inc();
            }
            self.account_send(&mut unacked[sent]);
            let _ = tx.try_send(unacked[sent].request.clone());
            sent += 1;
        }
        let mut client = UplinkClient::new(channel);
        let mut acks = match client.upload(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => return StreamEnd::Retry(format!("open stream: {status}")),
        };
        info!(endpoint = %self.cfg.endpoint, resending = sent, "upload stream open");
        // False once the collector stops reading (it drains on shutdown):
        // send nothing more, but read its acks and its final status first,
        // so that nothing it acked is sent again.
        let mut request_open = true;
        loop {
            if sent == 0 {
                self.refuse_oversized_head(unacked);
            }
            // A batch over the learned limit waits until it is the oldest.
            while request_open
                && sent < unacked.len()
                && sent < window
                && self.fits(&unacked[sent])
                && self.budget_allows(&unacked[sent])
            {
                if let Some(b) = self.bucket.as_mut() {
                    let wait = b.reserve(
                        unacked[sent].request.payload.len(),
                        std::time::Instant::now(),
                    );
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                self.account_send(&mut unacked[sent]);
                if tx.send(unacked[sent].request.clone()).await.is_err() {
                    request_open = false;
                    break;
                }
                sent += 1;
            }
            if *source_done && unacked.is_empty() {
                drop(tx);
                return StreamEnd::Done;
            }
            if sent == 0 && unacked.front().is_some_and(|b| !self.budget_allows(b)) {
                return StreamEnd::Retry("daily byte budget reached; resends wait".into());
            }
            let can_take = request_open && !*source_done && unacked.len() < window;
            let waiting = !unacked.is_empty();
            tokio::select! {
                b = source.recv(), if can_take => match b {
                    Some(b) => unacked.push_back(b),
                    None => *source_done = true,
                },
                m = acks.message() => match m {
                    Ok(Some(ack)) => {
                        if let Err(why) = self.on_ack(ack, unacked, &mut sent) {
                            return StreamEnd::Retry(why);
                        }
                        *backoff = self.cfg.backoff_initial;
                    }
                    Ok(None) => return StreamEnd::Retry("collector closed the stream".into()),
                    Err(status) => {
                        self.learn_limit(&status, &unacked.make_contiguous()[..sent]);
                        return StreamEnd::Retry(format!("stream error: {status}"));
                    }
                },
                _ = tokio::time::sleep(self.cfg.ack_timeout), if waiting => {
                    return StreamEnd::Retry(format!("no ack within {:?}", self.cfg.ack_timeout));
                }
            }
        }
    }

    /// Whether `b` may go on the link now: a first send was reserved when
    /// it was handed over; a resend costs again, so it must fit in what is
    /// left today (the budget is a hard cap).
    fn budget_allows(&self, b: &PreparedBatch) -> bool {
        match &self.budget {
            Some(budget) if b.sent => budget
                .lock()
                .expect("budget lock")
                .allows(b.class, b.request.payload.len() as u64),
            _ => true,
        }
    }

    /// Waits while the oldest unacked batch is a resend the budget does
    /// not allow today.
    async fn wait_for_budget(&self, unacked: &VecDeque<PreparedBatch>) {
        let Some(head) = unacked.front() else {
            return;
        };
        let mut logged = false;
        while !self.budget_allows(head) {
            let wait = self
                .budget
                .as_ref()
                .map(|b| b.lock().expect("budget lock").until_next_period())
                .unwrap_or_default();
            if !logged {
                warn!(seq = head.seq, next_period_in = ?wait,
                    "daily byte budget reached; resends wait for the next period (on disk, not lost)");
                logged = true;
            }
            tokio::time::sleep(wait.clamp(Duration::from_millis(100), Duration::from_secs(5)))
                .await;
        }
    }

    fn fits(&self, b: &PreparedBatch) -> bool {
        b.request.payload.len() <= self.max_send
    }

    /// A stream broken by the collector's message limit: one of the
    /// batches in flight was over it, so the largest of them was.
    fn learn_limit(&mut self, status: &tonic::Status, in_flight: &[PreparedBatch]) {
        let over_limit = matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted)
            && status.message().contains("message length too large");
        if !over_limit {
            return;
        }
        if let Some(largest) = in_flight.iter().map(|b| b.request.payload.len()).max() {
            self.max_send = self.max_send.min(largest.saturating_sub(1));
            warn!(
                limit = self.max_send,
                "the collector refused a request over its message limit; larger batches will be split"
            );
        }
    }

    /// Refuses the oldest unacked batches while they are over the learned
    /// limit (never sent, so nothing is in flight behind them).
    fn refuse_oversized_head(&mut self, unacked: &mut VecDeque<PreparedBatch>) {
        while unacked.front().is_some_and(|b| !self.fits(b)) {
            let b = unacked.pop_front().expect("front checked");
            let detail = format!(
                "{} bytes is over the collector's message limit (below {} bytes)",
                b.request.payload.len(),
                self.max_send + 1
            );
            self.refused(b, AckStatus::TooLarge, detail);
        }
    }

    fn refused(&mut self, b: PreparedBatch, status: AckStatus, detail: String) {
        self.counters.batches_rejected.inc();
        self.counters.flows_rejected.add(b.flows as u64);
        warn!(seq = b.seq, flows = b.flows, class = b.class.name(), status = status.as_str_name(), %detail,
            "collector refused batch for good; it is split or set aside");
        if let Some(tx) = &self.done {
            let _ = tx.send(Done::Refused {
                batch: b,
                status,
                detail,
            });
        }
    }

    /// Counts a batch going on the link and charges the budget: a first
    /// send turns its reservation into use, a resend costs again.
    fn account_send(&self, b: &mut PreparedBatch) {
        let bytes = b.request.payload.len() as u64;
        self.counters.bytes_sent.add(bytes);
        if let Some(budget) = &self.budget {
            let mut budget = budget.lock().expect("budget lock");
            if b.sent {
                budget.charge(bytes);
            } else {
                budget.commit(bytes);
            }
        }
        b.sent = true;
    }

    fn on_ack(
        &mut self,
        ack: UploadAck,
        unacked: &mut VecDeque<PreparedBatch>,
        sent: &mut usize,
    ) -> Result<(), String> {
        let Some(front) = unacked.front() else {
            return Err(format!("ack for seq {} with nothing in flight", ack.seq));
        };
        if front.seq != ack.seq || *sent == 0 {
            return Err(format!(
                "ack for seq {} but the oldest batch in flight is {}",
                ack.seq, front.seq
            ));
        }
        let status = AckStatus::try_from(ack.status).unwrap_or(AckStatus::Unspecified);
        match status {
            AckStatus::Accepted => {
                let b = unacked.pop_front().expect("front checked");
                *sent -= 1;
                if let Some(tx) = &self.done {
                    let _ = tx.send(Done::Acked {
                        class: b.class,
                        seq: b.seq,
                    });
                }
                self.counters.batches_acked.inc();
                self.counters.flows_acked.add(b.flows as u64);
                debug!(seq = b.seq, flows = b.flows, "batch acked");
                Ok(())
            }
            _ if ack.retryable => Err(format!(
                "collector could not take seq {} now ({}): {}",
                ack.seq,
                status.as_str_name(),
                ack.detail
            )),
            _ => {
                let b = unacked.pop_front().expect("front checked");
                *sent -= 1;
                self.refused(b, status, ack.detail);
                Ok(())
            }
        }
    }
}

/// `e` and its sources, joined, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
