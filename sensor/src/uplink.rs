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
//!
//! On a stream whose collector offers a link table (response header
//! `tidewatch-link-table-bytes`, see [`tidewatch_proto::link`]), each
//! columnar batch is re-encoded as it is sent: names and addresses that
//! earlier accepted batches of the stream kept are referred to, not spelled
//! again. The disk buffer keeps the self-contained batch, so a resend on a
//! new stream (an empty table) is encoded afresh. The budget and the rate
//! limit are charged for the bytes actually sent.
//!
//! Certificate renewal rides on the same connection: once the sensor's
//! certificate enters its renewal window, the uplink asks for a new one
//! (`Renew`, a fresh key's CSR; charged to the budget as control traffic),
//! saves it, stops sending on the stream, waits for the acks of what is in
//! flight and reconnects with the new certificate: no batch is resent or
//! lost by the switch. A refusal (revoked, unknown to the CA) is logged as
//! needing re-enrollment; other failures are retried within the window.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tidewatch_proto::codec;
use tidewatch_proto::link::{self, Kept, LinkEncoder};
use tidewatch_proto::metrics::{Counter, Gauge};
use tidewatch_proto::v1::uplink_client::UplinkClient;
use tidewatch_proto::v1::{AckStatus, RenewRequest, RenewResponse, UploadAck, UploadRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use tracing::{debug, error, info, warn};

use crate::batch::{PreparedBatch, Priority};
use crate::budget::DailyBudget;
use crate::identity::{self, RenewalKey};
use crate::ratelimit::TokenBucket;

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// `https://host:port` of the collector's ingest.
    pub endpoint: String,
    /// Name the collector's certificate must carry (defaults to the host).
    pub server_name: Option<String>,
    pub ca_pem: Vec<u8>,
    /// The certificate and key presented to the collector.
    pub identity: identity::Identity,
    /// Renew the certificate over the link (off: `None`).
    pub renewal: Option<Renewal>,
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

/// When and where the uplink renews the sensor's certificate.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// Renewed certificates are saved here (see [`identity::renewed_path`]).
    pub state_dir: PathBuf,
    /// Renew once this fraction of the lifetime is left (e.g. 1/3).
    pub fraction: f64,
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
    /// Certificates renewed over the link, and attempts that failed.
    pub renewals: Counter,
    pub renewal_failures: Counter,
    /// End of the current certificate's validity, Unix seconds.
    pub cert_not_after: Gauge,
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
    /// A new certificate was installed and nothing is in flight: reconnect
    /// with it at once.
    Renewed,
}

/// A renewal under way: the key it asked for, and the call.
type RenewCall = Pin<Box<dyn Future<Output = Result<RenewResponse, tonic::Status>> + Send>>;

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
    /// No renewal is tried before this (after a failure).
    next_renewal_try: SystemTime,
}

impl Uplink {
    pub fn new(cfg: UplinkConfig) -> Result<Self, UplinkError> {
        let endpoint = endpoint(&cfg, &cfg.identity)?;
        let bucket = (cfg.rate_limit > 0)
            .then(|| TokenBucket::new(cfg.rate_limit, std::time::Instant::now()));
        let counters = Arc::<UplinkCounters>::default();
        counters.cert_not_after.set(cfg.identity.not_after as f64);
        Ok(Uplink {
            cfg,
            endpoint,
            counters,
            done: None,
            max_send: usize::MAX,
            budget: None,
            bucket,
            next_renewal_try: SystemTime::UNIX_EPOCH,
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
        c.cert_not_after.set(self.cfg.identity.not_after as f64);
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
                    if self.cfg.identity.expired(SystemTime::now()) {
                        error!(endpoint = %self.cfg.endpoint, not_after = self.cfg.identity.not_after,
                            serial = %self.cfg.identity.serial, error = %error_chain(&e),
                            "cannot connect: this sensor's certificate has expired and cannot be renewed; \
                             re-enroll it (tidewatch-sensor enroll, then pki sign ashore); batches wait on disk");
                    } else {
                        warn!(endpoint = %self.cfg.endpoint, error = %error_chain(&e), "cannot connect to collector");
                    }
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
                StreamEnd::Renewed => {
                    info!(
                        unacked = unacked.len(),
                        "reconnecting with the renewed certificate"
                    );
                    first = true;
                }
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
        // What each batch in flight marked to keep in the link table.
        let mut kept: VecDeque<Kept> = VecDeque::new();
        self.refuse_oversized_head(unacked);
        // Queue the resends before opening the stream (self-contained: the
        // stream's link table is not known yet).
        while sent < unacked.len()
            && sent < window
            && self.fits(&unacked[sent])
            && self.budget_allows(&unacked[sent])
        {
            if unacked[sent].sent {
                self.counters.resent.inc();
            }
            let request = unacked[sent].request.clone();
            self.account_send(&mut unacked[sent], request.payload.len());
            let _ = tx.try_send(request);
            kept.push_back(Kept::default());
            sent += 1;
        }
        let client = UplinkClient::new(channel);
        let mut renewal: Option<(RenewalKey, RenewCall)> = None;
        let mut renewed = false;
        let (mut acks, mut link) = match client.clone().upload(ReceiverStream::new(rx)).await {
            Ok(r) => {
                let link = r
                    .metadata()
                    .get(link::HEADER)
                    .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                    .filter(|&bytes| bytes > 0)
                    .map(LinkEncoder::new);
                (r.into_inner(), link)
            }
            Err(status) => return StreamEnd::Retry(format!("open stream: {status}")),
        };
        info!(endpoint = %self.cfg.endpoint, resending = sent, link_table = link.is_some(), "upload stream open");
        // False once the collector stops reading (it drains on shutdown):
        // send nothing more, but read its acks and its final status first,
        // so that nothing it acked is sent again.
        let mut request_open = true;
        loop {
            if sent == 0 {
                self.refuse_oversized_head(unacked);
            }
            // A batch over the learned limit waits until it is the oldest.
            // A resend must fit in what is left today at its sealed size
            // (linked, it goes smaller).
            while request_open
                && sent < unacked.len()
                && sent < window
                && self.fits(&unacked[sent])
                && self.budget_allows(&unacked[sent])
            {
                // As the link carries it: linked to the stream's table
                // where there is one.
                let (request, keep) = link
                    .as_mut()
                    .and_then(|l| codec::encode_linked(&unacked[sent].request, l))
                    .unwrap_or_else(|| (unacked[sent].request.clone(), Kept::default()));
                let bytes = request.payload.len();
                if let Some(b) = self.bucket.as_mut() {
                    let wait = b.reserve(bytes, std::time::Instant::now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                self.account_send(&mut unacked[sent], bytes);
                if tx.send(request).await.is_err() {
                    request_open = false;
                    break;
                }
                kept.push_back(keep);
                sent += 1;
            }
            if *source_done && unacked.is_empty() {
                close(tx, &mut acks).await;
                return StreamEnd::Done;
            }
            if renewed && sent == 0 {
                // Everything sent on this stream is acked: close it (the
                // collector ends it once its acks are out) and reconnect.
                close(tx, &mut acks).await;
                return StreamEnd::Renewed;
            }
            if renewal.is_none() && !renewed {
                renewal = self.start_renewal(&client);
            }
            let renew_check = self.until_renewal_check();
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
                        match self.on_ack(ack, unacked, &mut sent) {
                            Ok(accepted) => {
                                // Both ends append what an accepted batch kept.
                                let k = kept.pop_front().unwrap_or_default();
                                if let (true, Some(l)) = (accepted, link.as_mut()) {
                                    l.accepted(&k);
                                }
                            }
                            Err(why) => return StreamEnd::Retry(why),
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
                r = async { (&mut renewal.as_mut().expect("checked").1).await }, if renewal.is_some() => {
                    let (key, _) = renewal.take().expect("checked");
                    if self.finish_renewal(key, r) {
                        // Send nothing more on this stream.
                        renewed = true;
                        request_open = false;
                    }
                }
                _ = tokio::time::sleep(renew_check), if renewal.is_none() && !renewed => {}
            }
        }
    }

    /// Time until a renewal may next be due (checked again then).
    fn until_renewal_check(&self) -> Duration {
        let Some(r) = &self.cfg.renewal else {
            return Duration::from_secs(3600);
        };
        let at = self
            .cfg
            .identity
            .renew_at(r.fraction)
            .max(self.next_renewal_try);
        at.duration_since(SystemTime::now())
            .unwrap_or_default()
            .clamp(Duration::from_millis(100), Duration::from_secs(3600))
    }

    /// Starts a renewal on the connection if one is due, the budget lets
    /// the request through (as control traffic) and no failure is being
    /// waited out.
    fn start_renewal(&mut self, client: &UplinkClient<Channel>) -> Option<(RenewalKey, RenewCall)> {
        let r = self.cfg.renewal.as_ref()?;
        let now = SystemTime::now();
        if now < self.cfg.identity.renew_at(r.fraction) || now < self.next_renewal_try {
            return None;
        }
        let key = match RenewalKey::new() {
            Ok(k) => k,
            Err(e) => {
                self.renewal_failed(&format!("cannot make a key: {e}"), false);
                return None;
            }
        };
        // The request and the certificate coming back, roughly.
        let bytes = key.csr_der.len() as u64 + 2048;
        if let Some(b) = &self.budget {
            let mut b = b.lock().expect("budget lock");
            if !b.allows(Priority::Control, bytes) {
                drop(b);
                self.renewal_failed("the daily byte budget leaves no room for it", false);
                return None;
            }
            b.charge(bytes);
        }
        info!(serial = %self.cfg.identity.serial, not_after = self.cfg.identity.not_after,
            "certificate in its renewal window; asking the collector for a new one");
        let mut client = client.clone();
        let req = RenewRequest {
            csr: key.csr_der.clone(),
        };
        let call: RenewCall = Box::pin(async move {
            match tokio::time::timeout(Duration::from_secs(60), client.renew(req)).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 60 s")),
            }
        });
        Some((key, call))
    }

    /// Installs the certificate a renewal brought (saved first, so a crash
    /// keeps it), or notes why it failed. Whether a new one is installed.
    fn finish_renewal(&mut self, key: RenewalKey, r: Result<RenewResponse, tonic::Status>) -> bool {
        let resp = match r {
            Ok(resp) => resp,
            Err(status) => {
                let permanent = status.code() == Code::PermissionDenied;
                self.renewal_failed(
                    &format!("{:?}: {}", status.code(), status.message()),
                    permanent,
                );
                return false;
            }
        };
        let renewal = self.cfg.renewal.clone().expect("renewing");
        let installed = key
            .accept(&resp.certificate_pem, &self.cfg.identity)
            .and_then(|id| id.save_renewed(&renewal.state_dir).map(|()| id))
            .map_err(|e| e.to_string())
            .and_then(|id| {
                endpoint(&self.cfg, &id)
                    .map(|ep| (id, ep))
                    .map_err(|e| e.to_string())
            });
        match installed {
            Ok((id, ep)) => {
                info!(old_serial = %self.cfg.identity.serial, serial = %id.serial, not_after = id.not_after,
                    "certificate renewed; switching to it once the batches in flight are acked");
                self.counters.renewals.inc();
                self.counters.cert_not_after.set(id.not_after as f64);
                self.cfg.identity = id;
                self.endpoint = ep;
                true
            }
            Err(e) => {
                self.renewal_failed(&format!("the new certificate is unusable: {e}"), false);
                false
            }
        }
    }

    /// Counts a failed renewal and sets when to try again: within the time
    /// left (a tenth of it, between a second and ten minutes), or, when the
    /// collector refused for good, in an hour.
    fn renewal_failed(&mut self, why: &str, permanent: bool) {
        self.counters.renewal_failures.inc();
        let now = SystemTime::now();
        let left = self.cfg.identity.remaining(now);
        if permanent {
            error!(reason = %why, expires_in = ?left, serial = %self.cfg.identity.serial,
                "the collector refuses to renew this sensor's certificate (revoked, or unknown to the CA): \
                 re-enroll it before it expires (tidewatch-sensor enroll, then pki sign ashore)");
            self.next_renewal_try = now + Duration::from_secs(3600);
        } else {
            let wait = (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
            warn!(reason = %why, retry_in = ?wait, expires_in = ?left, "certificate renewal failed; will retry");
            self.next_renewal_try = now + wait;
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

    /// Counts a batch going on the link as `bytes` (linked, or as sealed)
    /// and charges the budget: a first send turns its reservation (of the
    /// sealed size) into use, a resend costs again.
    fn account_send(&self, b: &mut PreparedBatch, bytes: usize) {
        let bytes = bytes as u64;
        self.counters.bytes_sent.add(bytes);
        if let Some(budget) = &self.budget {
            let mut budget = budget.lock().expect("budget lock");
            if b.sent {
                budget.charge(bytes);
            } else {
                budget.commit(b.request.payload.len() as u64, bytes);
            }
        }
        b.sent = true;
    }

    /// The oldest batch in flight is answered: whether it was accepted,
    /// or why the stream must be dropped.
    fn on_ack(
        &mut self,
        ack: UploadAck,
        unacked: &mut VecDeque<PreparedBatch>,
        sent: &mut usize,
    ) -> Result<bool, String> {
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
                Ok(true)
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
                Ok(false)
            }
        }
    }
}

/// Ends a stream with nothing in flight: the end of the requests, then the
/// collector's end of the acks (it ends its side once it has read ours), so
/// that the connection is not dropped under a stream the collector is still
/// reading (which it would count as broken). Bounded: a dead link is given
/// up after `CLOSE_WAIT`.
async fn close(tx: mpsc::Sender<UploadRequest>, acks: &mut tonic::Streaming<UploadAck>) {
    drop(tx);
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Ok(Some(_)) = acks.message().await {}
    })
    .await;
}

/// How long a stream with nothing in flight waits for the collector to end
/// it (see [`close`]).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The collector endpoint, presenting `id`.
fn endpoint(cfg: &UplinkConfig, id: &identity::Identity) -> Result<Endpoint, UplinkError> {
    let bad =
        |e: &dyn std::fmt::Display| UplinkError::Endpoint(cfg.endpoint.clone(), e.to_string());
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cfg.ca_pem))
        .identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    if let Some(name) = &cfg.server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Endpoint::from_shared(cfg.endpoint.clone())
        .map_err(|e| bad(&e))?
        .tls_config(tls)
        .map_err(|e| bad(&e))?
        .connect_timeout(cfg.connect_timeout)
        .http2_keep_alive_interval(cfg.keepalive_interval)
        .keep_alive_timeout(cfg.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true))
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
