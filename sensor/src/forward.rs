//! The forwarding half of the sensor: sealed batches → disk buffer →
//! uplink → acks back to the disk buffer.
//!
//! A batch takes one path, and only the [`Forwarder`] holds it on the way:
//!
//! 1. [`Forwarder::push`] seals a group of records (the next seqs, under the
//!    batch size limit) and appends the batches to their upload class's part
//!    of the [`ClassedBuffer`], under one lock, so seqs go into each class in
//!    order. From then on the disk is the only copy: the caller keeps
//!    nothing, so a crash or a restart loses nothing that was pushed.
//! 2. A feeder thread reads every class's part from its ack cursor on (batches
//!    left by an earlier run included), picks the highest-priority class that
//!    has a batch waiting and that the [`DailyBudget`] allows (booking the
//!    bytes as reserved), and hands the batch to the [`Uplink`]. What the
//!    budget holds back stays on disk, not in the uplink's window.
//! 3. The uplink reports every batch it is done with, in order; the acker
//!    task moves that class's ack cursor, which lets the buffer reclaim the
//!    space. A batch the collector refused as too large is split: its
//!    records, sealed again in halves under new seqs, replace it at the end
//!    of the queue (journaled, so a crash neither loses nor repeats them).
//!    One refused otherwise, or a single record too large, is set aside on
//!    disk with its reason (counted, reported in `SensorStatus`, retried
//!    with `tidewatch-sensor buffer set-aside retry`). Neither blocks the
//!    batches behind it.
//!
//! [`Forwarder::finish`] waits until metering's last batch is acked, or
//! until the stop flag is set (then everything unacknowledged stays on disk
//! for the next start).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewatch_proto::metrics::{Counter, Registry};
use tidewatch_proto::v1::{AckStatus, SensorStatus};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::batch::{now_us, Group, PreparedBatch, Priority, Sealer, StateError};
use crate::budget::{BudgetConfig, BudgetError, DailyBudget};
use crate::buffer::{
    BufferConfig, BufferError, BufferStats, ClassedBuffer, OpenReport, Reader, SetAsideStats,
    Stored,
};
use crate::pipeline::Progress;
use crate::uplink::{Done, Uplink, UplinkConfig, UplinkCounters, UplinkError, UplinkStats};

/// What the forwarder is built from.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub buffer: BufferConfig,
    pub budget: BudgetConfig,
    pub uplink: UplinkConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error("cannot start the buffer feeder thread: {0}")]
    Thread(std::io::Error),
    #[error("the {0} stopped unexpectedly (panicked)")]
    Panicked(&'static str),
}

/// Owns the disk buffer, the daily budget, the feeder, the uplink and the
/// acker of a running sensor (see the module docs for a batch's path).
pub struct Forwarder {
    disk: Arc<Mutex<ClassedBuffer>>,
    /// Locked after `disk` (never the other way round).
    sealer: Arc<Mutex<Sealer>>,
    /// Batches split after a refusal as too large, and set aside.
    refusals: Arc<Refusals>,
    budget: Arc<Mutex<DailyBudget>>,
    counters: Arc<UplinkCounters>,
    metering_done: Arc<AtomicBool>,
    upload: JoinHandle<UplinkStats>,
    acker: JoinHandle<()>,
    feeder: std::thread::JoinHandle<()>,
    /// Flow records pushed by this run.
    flows_pushed: u64,
}

/// How [`Forwarder::finish`] ended.
pub enum Finished {
    /// Every batch was handed to the uplink and the uplink is done with it.
    Delivered {
        uplink: UplinkStats,
        buffer: BufferStats,
        set_aside: SetAsideStats,
    },
    /// Stopped by the stop flag first; unacknowledged batches stay on disk.
    Stopped { buffer: BufferStats },
}

impl Forwarder {
    /// Opens the disk buffer and the budget in `state_dir` and starts the
    /// feeder thread, the uplink and the acker on `rt`.
    pub fn start(
        rt: &tokio::runtime::Handle,
        state_dir: &Path,
        sealer: Sealer,
        cfg: ForwarderConfig,
    ) -> Result<Forwarder, ForwardError> {
        let budget = Arc::new(Mutex::new(DailyBudget::open(state_dir, cfg.budget)?));
        let (disk, opened) = ClassedBuffer::open(cfg.buffer)?;
        log_opened(&opened);
        let readers: Vec<(Priority, Reader)> = Priority::ALL
            .iter()
            .map(|c| (*c, disk.reader(*c)))
            .collect();
        let disk = Arc::new(Mutex::new(disk));
        let sealer = Arc::new(Mutex::new(sealer));
        let refusals = Arc::new(Refusals::default());
        let counters = Arc::new(UplinkCounters::default());
        let (to_uplink, from_feeder) = mpsc::channel::<PreparedBatch>(cfg.uplink.window * 2);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let uplink = Uplink::new(cfg.uplink)?
            .with_done_channel(done_tx)
            .with_counters(counters.clone())
            .with_budget(budget.clone());
        let upload = rt.spawn(uplink.run(from_feeder));
        // Batches handed to the uplink and not yet done with (acked, or
        // split and set aside): the feeder waits for them before it ends, as
        // a split puts batches back into the buffer.
        let outstanding = Arc::new(AtomicU64::new(0));
        let acker = {
            let (disk, sealer, refusals) = (disk.clone(), sealer.clone(), refusals.clone());
            let outstanding = outstanding.clone();
            rt.spawn(async move {
                while let Some(done) = done_rx.recv().await {
                    match done {
                        Done::Acked { class, seq } => {
                            if let Err(e) = disk.lock().expect("buffer lock").ack(class, seq) {
                                error!(error = %e, seq, class = class.name(), "cannot record ack in the disk buffer");
                            }
                        }
                        Done::Refused {
                            batch,
                            status,
                            detail,
                        } => refusals.handle(&disk, &sealer, batch, status, &detail),
                    }
                    outstanding.fetch_sub(1, Ordering::SeqCst);
                }
            })
        };
        let metering_done = Arc::new(AtomicBool::new(false));
        let feeder = {
            let feeder = Feeder {
                readers,
                budget: budget.clone(),
                to_uplink,
                outstanding: outstanding.clone(),
            };
            let done = metering_done.clone();
            std::thread::Builder::new()
                .name("buffer-feeder".into())
                .spawn(move || feeder.run(&done))
                .map_err(ForwardError::Thread)?
        };
        Ok(Forwarder {
            disk,
            sealer,
            refusals,
            budget,
            counters,
            metering_done,
            upload,
            acker,
            feeder,
            flows_pushed: 0,
        })
    }

    /// Seals `g` and appends its batches to the disk buffer (making room
    /// under its cap as `--when-full` says; a drop is counted and logged,
    /// not an error). Returns the batches.
    pub fn push(&mut self, g: Group) -> Result<Vec<PreparedBatch>, ForwardError> {
        let mut d = self.disk.lock().expect("buffer lock");
        let mut sealer = self.sealer.lock().expect("sealer lock");
        // The seq counter needs a few bytes of disk: on a full disk, make
        // room as the buffer does, or count the records as dropped.
        loop {
            match sealer.reserve_seqs() {
                Ok(()) => break,
                Err(e) if e.is_disk_full() => {
                    if !d.make_room_on_full_disk()? {
                        let flows = g.flows.len() as u64;
                        d.count_dropped_on_full_disk(g.class, flows);
                        warn!(
                            flows,
                            class = g.class.name(),
                            "disk full and nothing left to drop; records dropped (counted)"
                        );
                        return Ok(Vec::new());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let batches = sealer.seal(g)?;
        drop(sealer);
        for b in &batches {
            self.flows_pushed += b.flows as u64;
            let before = d.stats().dropped_batches;
            if !d.append(b)? {
                warn!(
                    seq = b.seq,
                    flows = b.flows,
                    class = b.class.name(),
                    "disk buffer full; new batch dropped (counted)"
                );
            } else if d.stats().dropped_batches > before {
                warn!(
                    dropped = d.stats().dropped_batches - before,
                    total_dropped_flows = d.stats().dropped_flows,
                    "disk buffer full; oldest batches dropped (counted)"
                );
            }
        }
        Ok(batches)
    }

    /// Whether bulk batches sealed earlier are still unacknowledged: the
    /// link or the daily budget, not metering, sets the pace, and a bulk
    /// batch sealed now would wait behind them.
    pub fn bulk_backlogged(&self) -> bool {
        let d = self.disk.lock().expect("buffer lock");
        d.class(Priority::Bulk).stats().pending_batches > 0
    }

    /// Flow records pushed so far by this run.
    pub fn flows_pushed(&self) -> u64 {
        self.flows_pushed
    }

    /// The sensor's status now: capture counters from `progress`, buffer
    /// and budget from the forwarder.
    pub fn status(&self, progress: &Progress) -> SensorStatus {
        let (bs, aside) = {
            let d = self.disk.lock().expect("buffer lock");
            (d.stats(), d.set_aside_stats().clone())
        };
        let (sent_today, limit) = {
            let mut b = self.budget.lock().expect("budget lock");
            (b.used(), b.limit())
        };
        SensorStatus {
            bytes_sent_today: sent_today,
            daily_byte_budget: limit,
            observed_us: now_us(),
            capture_packets: Progress::get(&progress.frames),
            capture_drops: Progress::get(&progress.kernel_drops),
            flows_evicted: Progress::get(&progress.flows_evicted),
            buffer_backlog_bytes: bs.bytes,
            buffer_backlog_records: bs.pending_flows,
            records_dropped: bs.dropped_flows,
            batches_set_aside: aside.batches,
            records_set_aside: aside.flows,
            set_aside_reason: aside.last_reason,
            software_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The Prometheus registry over metering (`progress`) and the
    /// forwarder's buffer, budget and uplink.
    pub fn metrics(&self, progress: Arc<Progress>) -> Arc<Registry> {
        crate::metrics::registry(
            progress,
            self.counters.clone(),
            self.refusals.clone(),
            self.disk.clone(),
            self.budget.clone(),
        )
    }

    /// Metering is over: forces the buffer to disk, lets the feeder drain
    /// it, and waits until the uplink is done with every batch, or until
    /// `stop` is set (then what is unacknowledged stays on disk and the next
    /// start resumes from it).
    pub fn finish(
        self,
        rt: &tokio::runtime::Runtime,
        stop: &AtomicBool,
    ) -> Result<Finished, ForwardError> {
        {
            let mut disk = self.disk.lock().expect("buffer lock");
            disk.sync()?;
            let bs = disk.stats();
            info!(
                pending_batches = bs.pending_batches,
                pending_flows = bs.pending_flows,
                "metering done; every record is in the disk buffer"
            );
        }
        // Appends that happened before the flag are visible after it.
        self.metering_done.store(true, Ordering::SeqCst);
        let finished = rt.block_on(async {
            let mut upload = self.upload;
            loop {
                tokio::select! {
                    r = &mut upload => break Some(r),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if stop.load(Ordering::SeqCst) {
                            break None;
                        }
                    }
                }
            }
        });
        if let Err(e) = self.budget.lock().expect("budget lock").persist() {
            warn!(error = %e, "cannot record budget use");
        }
        let Some(uplink) = finished else {
            let buffer = self.disk.lock().expect("buffer lock").stats();
            info!(
                pending_batches = buffer.pending_batches,
                pending_flows = buffer.pending_flows,
                "stopping; unacknowledged batches stay in the disk buffer for the next start"
            );
            return Ok(Finished::Stopped { buffer });
        };
        let uplink = uplink.map_err(|_| ForwardError::Panicked("uplink"))?;
        rt.block_on(self.acker)
            .map_err(|_| ForwardError::Panicked("acker"))?;
        self.feeder
            .join()
            .map_err(|_| ForwardError::Panicked("buffer feeder thread"))?;
        let (buffer, set_aside) = {
            let d = self.disk.lock().expect("buffer lock");
            (d.stats(), d.set_aside_stats().clone())
        };
        Ok(Finished::Delivered {
            uplink,
            buffer,
            set_aside,
        })
    }
}

/// What the forwarder did with batches the collector refused for good.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Batches split into smaller ones (after a refusal as too large).
    pub split: Counter,
    /// Batches set aside on disk.
    pub set_aside: Counter,
}

impl Refusals {
    /// Splits a batch refused as too large (halves, sealed again under new
    /// seqs, at the end of the queue), or sets it aside: refused otherwise,
    /// a single record, or not decodable. Either way the queue moves on.
    fn handle(
        &self,
        disk: &Mutex<ClassedBuffer>,
        sealer: &Mutex<Sealer>,
        b: PreparedBatch,
        status: AckStatus,
        detail: &str,
    ) {
        let reason = format!("{}: {detail}", status.as_str_name());
        let mut d = disk.lock().expect("buffer lock");
        if status == AckStatus::TooLarge {
            let half = b.request.payload.len() / 2;
            let resealed = {
                let mut s = sealer.lock().expect("sealer lock");
                let max = half.min(s.max_bytes());
                s.reseal(&b, max)
            };
            match resealed {
                Ok(Some(parts)) if parts.len() > 1 => match d.replace(&b, &parts, &reason) {
                    Ok(()) => {
                        self.split.inc();
                        info!(
                            seq = b.seq,
                            class = b.class.name(),
                            flows = b.flows,
                            parts = parts.len(),
                            first_seq = parts[0].seq,
                            "batch refused as too large split into smaller ones"
                        );
                        return;
                    }
                    Err(e) => {
                        error!(seq = b.seq, error = %e, "cannot split the batch; setting it aside")
                    }
                },
                Ok(_) => {}
                Err(e) => {
                    error!(seq = b.seq, error = %e, "cannot split the batch; setting it aside")
                }
            }
        }
        match d.set_aside(&b, &reason) {
            Ok(()) => {
                self.set_aside.inc();
                warn!(seq = b.seq, class = b.class.name(), flows = b.flows, %reason,
                    "batch set aside (see `tidewatch-sensor buffer set-aside list`)");
            }
            Err(e) => {
                // Counted as dropped (reported ashore in records_dropped).
                d.count_dropped(&b);
                error!(seq = b.seq, flows = b.flows, error = %e, "cannot set the refused batch aside; dropped (counted)");
            }
        }
    }
}

fn log_opened(opened: &OpenReport) {
    if opened.splits_completed > 0 {
        info!(
            splits = opened.splits_completed,
            "completed batch splits a stop had interrupted"
        );
    }
    if opened.corrupt_records > 0 {
        warn!(
            corrupt = opened.corrupt_records,
            "damaged records in the disk buffer were skipped (see `tidewatch-sensor buffer check`)"
        );
    }
    if opened.pending_batches > 0 {
        info!(
            batches = opened.pending_batches,
            "resuming upload of batches buffered before the restart"
        );
    }
}

/// Streams the disk buffer to the uplink (step 2 of the module docs).
struct Feeder {
    readers: Vec<(Priority, Reader)>,
    budget: Arc<Mutex<DailyBudget>>,
    to_uplink: mpsc::Sender<PreparedBatch>,
    /// Handed to the uplink, not yet done with (see [`Forwarder::start`]).
    outstanding: Arc<AtomicU64>,
}

impl Feeder {
    /// Always sends the highest-priority class that has a batch waiting and
    /// that the daily budget allows (booked as reserved here and charged
    /// when the uplink sends it). Returns when `metering_done` is set,
    /// every class is drained and the uplink is done with every batch it
    /// was handed, or when the uplink is gone.
    fn run(mut self, metering_done: &AtomicBool) {
        let mut next: Vec<Option<Stored>> = self.readers.iter().map(|_| None).collect();
        let mut held_back = false;
        loop {
            // Appends that happened before the flag (metering's), or before
            // the count went down (a split's), are visible after it: both
            // are read before the buffer is.
            let done = metering_done.load(Ordering::SeqCst)
                && self.outstanding.load(Ordering::SeqCst) == 0;
            for (i, (class, r)) in self.readers.iter_mut().enumerate() {
                if next[i].is_none() {
                    match r.next_batch() {
                        Ok(b) => next[i] = b,
                        Err(e) => {
                            error!(class = class.name(), error = %e, "cannot read the disk buffer; retrying");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            }
            if next.iter().all(Option::is_none) {
                if done {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let Some(i) = self.pick(&next) else {
                if !held_back {
                    self.log_held_back(&next);
                    held_back = true;
                }
                let wait = self.budget.lock().expect("budget lock").until_next_period();
                std::thread::sleep(wait.min(Duration::from_millis(500)));
                continue;
            };
            if held_back {
                info!("budget allows sending again");
                held_back = false;
            }
            let b = next[i].take().expect("picked");
            let class = self.readers[i].0;
            self.outstanding.fetch_add(1, Ordering::SeqCst);
            if self
                .to_uplink
                .blocking_send(b.into_prepared(class))
                .is_err()
            {
                return;
            }
        }
    }

    /// The highest-priority waiting batch, if the budget allows it, its
    /// bytes reserved.
    fn pick(&self, next: &[Option<Stored>]) -> Option<usize> {
        let mut b = self.budget.lock().expect("budget lock");
        // Strict priority: the highest class with a batch waiting goes, or
        // nothing does (a smaller batch of a lower class does not overtake
        // one that waits for budget).
        let pick = next
            .iter()
            .enumerate()
            .find_map(|(i, n)| Some((i, n.as_ref()?.request.payload.len() as u64)))
            .filter(|&(i, bytes)| b.allows(self.readers[i].0, bytes));
        if let Some((_, bytes)) = pick {
            b.reserve(bytes);
        }
        if let Err(e) = b.persist_if_due() {
            warn!(error = %e, "cannot record budget use");
        }
        pick.map(|(i, _)| i)
    }

    fn log_held_back(&self, next: &[Option<Stored>]) {
        let (used, limit, wait) = {
            let mut b = self.budget.lock().expect("budget lock");
            (b.used(), b.limit(), b.until_next_period())
        };
        let waiting: Vec<&str> = self
            .readers
            .iter()
            .zip(next)
            .filter(|(_, n)| n.is_some())
            .map(|((c, _), _)| c.name())
            .collect();
        warn!(used, limit, ?waiting, next_day_in = ?wait,
            "daily byte budget reached; holding batches in the disk buffer");
    }
}
