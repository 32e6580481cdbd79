//! The forwarding half of the sensor: sealed batches → disk buffer →
//! uplink → acks back to the disk buffer.
//!
//! A batch takes one path, and only the [`Forwarder`] holds it on the way:
//!
//! 1. [`Forwarder::push`] appends it to its upload class's part of the
//!    [`ClassedBuffer`]. From then on the disk is the only copy: the caller
//!    keeps nothing, so a crash or a restart loses nothing that was pushed.
//! 2. A feeder thread reads every class's part from its ack cursor on (batches
//!    left by an earlier run included), picks the highest-priority class that
//!    has a batch waiting and that the [`DailyBudget`] allows (booking the
//!    bytes as reserved), and hands the batch to the [`Uplink`]. What the
//!    budget holds back stays on disk, not in the uplink's window.
//! 3. The uplink reports every batch it is done with (acked by the collector,
//!    or refused for good) as (class, seq), in order; the acker task moves
//!    that class's ack cursor, which lets the buffer reclaim the space.
//!
//! [`Forwarder::finish`] waits until metering's last batch is acked, or
//! until the stop flag is set (then everything unacknowledged stays on disk
//! for the next start).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewatch_proto::metrics::Registry;
use tidewatch_proto::v1::SensorStatus;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::batch::{now_us, PreparedBatch, Priority};
use crate::budget::{BudgetConfig, BudgetError, DailyBudget};
use crate::buffer::{
    BufferConfig, BufferError, BufferStats, ClassedBuffer, OpenReport, Reader, Stored,
};
use crate::pipeline::Progress;
use crate::uplink::{Uplink, UplinkConfig, UplinkCounters, UplinkError, UplinkStats};

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
        let counters = Arc::new(UplinkCounters::default());
        let (to_uplink, from_feeder) = mpsc::channel::<PreparedBatch>(cfg.uplink.window * 2);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Priority, u64)>();
        let uplink = Uplink::new(cfg.uplink)?
            .with_done_channel(done_tx)
            .with_counters(counters.clone())
            .with_budget(budget.clone());
        let upload = rt.spawn(uplink.run(from_feeder));
        let acker = {
            let disk = disk.clone();
            rt.spawn(async move {
                while let Some((class, seq)) = done_rx.recv().await {
                    if let Err(e) = disk.lock().expect("buffer lock").ack(class, seq) {
                        error!(error = %e, seq, class = class.name(), "cannot record ack in the disk buffer");
                    }
                }
            })
        };
        let metering_done = Arc::new(AtomicBool::new(false));
        let feeder = {
            let feeder = Feeder {
                readers,
                budget: budget.clone(),
                to_uplink,
            };
            let done = metering_done.clone();
            std::thread::Builder::new()
                .name("buffer-feeder".into())
                .spawn(move || feeder.run(&done))
                .map_err(ForwardError::Thread)?
        };
        Ok(Forwarder {
            disk,
            budget,
            counters,
            metering_done,
            upload,
            acker,
            feeder,
            flows_pushed: 0,
        })
    }

    /// Appends a sealed batch to the disk buffer (making room under its cap
    /// as `--when-full` says; a drop is counted and logged, not an error).
    pub fn push(&mut self, b: &PreparedBatch) -> Result<(), ForwardError> {
        self.flows_pushed += b.flows as u64;
        let mut d = self.disk.lock().expect("buffer lock");
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
        Ok(())
    }

    /// Flow records pushed so far by this run.
    pub fn flows_pushed(&self) -> u64 {
        self.flows_pushed
    }

    /// The sensor's status now: capture counters from `progress`, buffer
    /// and budget from the forwarder.
    pub fn status(&self, progress: &Progress) -> SensorStatus {
        let bs = self.disk.lock().expect("buffer lock").stats();
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
            software_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The Prometheus registry over metering (`progress`) and the
    /// forwarder's buffer, budget and uplink.
    pub fn metrics(&self, progress: Arc<Progress>) -> Arc<Registry> {
        crate::metrics::registry(
            progress,
            self.counters.clone(),
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
        let buffer = self.disk.lock().expect("buffer lock").stats();
        Ok(Finished::Delivered { uplink, buffer })
    }
}

fn log_opened(opened: &OpenReport) {
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
}

impl Feeder {
    /// Always sends the highest-priority class that has a batch waiting and
    /// that the daily budget allows (booked as reserved here and charged
    /// when the uplink sends it). Returns when `metering_done` is set and
    /// every class is drained, or when the uplink is gone.
    fn run(mut self, metering_done: &AtomicBool) {
        let mut next: Vec<Option<Stored>> = self.readers.iter().map(|_| None).collect();
        let mut held_back = false;
        loop {
            // Appends that happened before the flag are visible after it.
            let done = metering_done.load(Ordering::SeqCst);
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
            if self
                .to_uplink
                .blocking_send(b.into_prepared(class))
                .is_err()
            {
                return;
            }
        }
    }

    /// The first (highest-priority) waiting batch the budget allows, its
    /// bytes reserved.
    fn pick(&self, next: &[Option<Stored>]) -> Option<usize> {
        let mut b = self.budget.lock().expect("budget lock");
        let pick = next.iter().enumerate().find_map(|(i, n)| {
            let bytes = n.as_ref()?.request.payload.len() as u64;
            b.allows(self.readers[i].0, bytes).then_some((i, bytes))
        });
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
