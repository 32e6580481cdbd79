//! `tidewatch-sensor run`: meters a capture file or a live interface and
//! uploads flows, assets and sensor status through the disk buffer
//! ([`Forwarder`]), waiting until every batch is acked (live: until
//! SIGTERM).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tidewatch_sensor::batch::{Batcher, Group, PreparedBatch, Sealer, SeqStore};
use tidewatch_sensor::budget::BudgetConfig;
use tidewatch_sensor::forward::{Finished, Forwarder, ForwarderConfig};
use tidewatch_sensor::identity::Identity;
use tidewatch_sensor::pipeline::Progress;
use tidewatch_sensor::uplink::{Renewal, Uplink, UplinkConfig};
use tracing::info;

use super::metering::{meter, stop_flag, Control};
use super::RunArgs;

impl RunArgs {
    /// Checks the options that clap cannot.
    fn validate(&self) -> anyhow::Result<()> {
        if self
            .replay_speed
            .is_some_and(|x| !(x.is_finite() && x > 0.0))
        {
            bail!("--replay-speed must be a positive number");
        }
        if self.batch_flows == 0 || self.window == 0 {
            bail!("--batch-flows and --window must be at least 1");
        }
        self.seal.config(self.batch_flows)?;
        if !(self.ack_timeout.is_finite() && self.ack_timeout > 0.0) {
            bail!("--ack-timeout must be a positive number of seconds");
        }
        for (name, v) in [
            ("--keepalive-secs", self.keepalive_secs),
            ("--flush-interval", self.flush_interval),
            ("--max-batch-age", self.max_batch_age),
            ("--status-interval", self.status_interval),
            ("--budget-period-secs", self.budget_period_secs),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} must be a positive number of seconds, got {v}");
            }
        }
        if !(self.renew_fraction > 0.0 && self.renew_fraction <= 0.5) {
            bail!(
                "--renew-fraction must be above 0 and at most 0.5 (the collector renews no earlier \
                 than the last half of a lifetime; e.g. 0.33: renew in the last third), got {}",
                self.renew_fraction
            );
        }
        if self.budget_reserve_percent > 90 {
            bail!(
                "--budget-reserve-percent {} leaves too little for bulk flows (at most 90)",
                self.budget_reserve_percent
            );
        }
        Ok(())
    }

    fn uplink_config(&self) -> anyhow::Result<UplinkConfig> {
        let ca_pem = read_pem("CA certificate", &self.ca)?;
        let identity = Identity::load(&self.cert, &self.key, Some(&self.state_dir))
            .context("loading the sensor's certificate and key")?;
        info!(serial = %identity.serial, origin = ?identity.origin, not_after = identity.not_after,
            "sensor certificate loaded");
        Ok(UplinkConfig {
            endpoint: self.collector.clone(),
            server_name: self.server_name.clone(),
            ca_pem,
            identity,
            renewal: (!self.no_renew).then(|| Renewal {
                state_dir: self.state_dir.clone(),
                fraction: self.renew_fraction,
            }),
            window: self.window,
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs_f64(self.ack_timeout),
            keepalive_interval: Duration::from_secs_f64(self.keepalive_secs),
            keepalive_timeout: Duration::from_secs_f64(self.keepalive_secs),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            rate_limit: self.rate_limit,
        })
    }

    fn forwarder_config(&self, uplink: UplinkConfig) -> anyhow::Result<ForwarderConfig> {
        Ok(ForwarderConfig {
            buffer: self.buffer.config(&self.state_dir)?,
            budget: BudgetConfig {
                daily_bytes: self.daily_budget_bytes,
                reserve_percent: self.budget_reserve_percent,
                period: Duration::from_secs_f64(self.budget_period_secs),
            },
            uplink,
        })
    }
}

fn read_pem(what: &str, p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {what} {}", p.display()))
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    args.validate()?;
    let mut table = args.meter.table(true)?;
    let uplink_cfg = args.uplink_config()?;
    let batch_cfg = args.seal.config(args.batch_flows)?;
    let mut batcher = Batcher::new(batch_cfg.clone());
    let sealer = Sealer::new(batch_cfg, SeqStore::open(&args.state_dir)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut fwd = Forwarder::start(
        rt.handle(),
        &args.state_dir,
        sealer,
        args.forwarder_config(uplink_cfg.clone())?,
    )?;
    let progress = std::sync::Arc::new(Progress::default());
    let metrics_task = match args.metrics_listen {
        Some(addr) => {
            let (local, task) = rt
                .block_on(tidewatch_proto::metrics::serve(
                    addr,
                    fwd.metrics(progress.clone()),
                    std::sync::Arc::new(|| Ok(())),
                ))
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            info!(listen = %local, "metrics at http://{local}/metrics");
            Some(task)
        }
        None => None,
    };
    let stop = stop_flag(&rt);

    // Metering runs on this thread; every sealed batch goes to the disk
    // buffer, which absorbs any backlog.
    let mut kept: Vec<PreparedBatch> = Vec::new();
    let mut push = |fwd: &mut Forwarder, g: Group| -> anyhow::Result<()> {
        let sealed = fwd.push(g)?;
        if args.resend_acked {
            kept.extend(sealed);
        }
        Ok(())
    };
    let flush_every = Duration::from_secs_f64(args.flush_interval);
    let status_every = Duration::from_secs_f64(args.status_interval);
    let hold_bulk = Duration::from_secs_f64(args.max_batch_age);
    let mut last_flush = Instant::now();
    let mut last_status = Instant::now();
    let m = meter(
        args.pcap.as_ref(),
        &args.live,
        &mut table,
        Control {
            stop: &stop,
            duration: None,
            pace: args.replay_speed,
            progress: &progress,
        },
        |recs, assets| {
            for g in batcher.push(recs, assets) {
                push(&mut fwd, g)?;
                last_flush = Instant::now();
            }
            let due_status = last_status.elapsed() >= status_every;
            if due_status || last_flush.elapsed() >= flush_every {
                let st = due_status.then(|| fwd.status(&progress));
                // A backlog: bulk flows wait to make a larger batch.
                let hold = if fwd.bulk_backlogged() {
                    hold_bulk
                } else {
                    Duration::ZERO
                };
                for g in batcher.flush_holding_bulk(st, hold) {
                    push(&mut fwd, g)?;
                }
                last_flush = Instant::now();
                if due_status {
                    last_status = last_flush;
                }
            }
            Ok(())
        },
    )?;
    debug_assert_eq!(Progress::get(&progress.frames), m.frames);
    for g in batcher.flush(Some(fwd.status(&progress))) {
        push(&mut fwd, g)?;
    }
    let total_flows = fwd.flows_pushed();
    // Signalled (before or meanwhile): everything is on disk and the next
    // start resumes from the first unacked batch, so there is no need to
    // wait for the link.
    let (stats, bs, aside) = match fwd.finish(&rt, &stop)? {
        Finished::Stopped { .. } => {
            return m.cut_error(args.pcap.as_ref(), "stored in the disk buffer")
        }
        Finished::Delivered {
            uplink,
            buffer,
            set_aside,
        } => (uplink, buffer, set_aside),
    };
    info!(
        frames = m.frames,
        flows = total_flows,
        batches_acked = stats.batches_acked,
        flows_acked = stats.flows_acked,
        batches_refused = stats.batches_rejected,
        batches_set_aside = aside.batches,
        resent = stats.resent,
        reconnects = stats.reconnects,
        bytes_sent = stats.bytes_sent,
        buffer_pending = bs.pending_batches,
        buffer_dropped_flows = bs.dropped_flows,
        "upload complete"
    );
    if let Some(t) = metrics_task {
        t.abort();
    }
    if args.resend_acked {
        resend(&rt, uplink_cfg, kept)?;
    }
    if aside.batches > 0 {
        bail!(
            "{} batch(es) ({} flows) are set aside, refused by the collector (latest reason: {}); \
             see `tidewatch-sensor buffer set-aside list`, fix the cause, then `buffer set-aside retry`",
            aside.batches,
            aside.flows,
            aside.last_reason
        );
    }
    m.cut_error(args.pcap.as_ref(), "uploaded")
}

/// Fault injection for tests (`--resend-acked`): sends every batch again
/// with its original seq, on a fresh uplink; the shore must drop them.
fn resend(
    rt: &tokio::runtime::Runtime,
    mut cfg: UplinkConfig,
    batches: Vec<PreparedBatch>,
) -> anyhow::Result<()> {
    cfg.renewal = None;
    info!(
        batches = batches.len(),
        "fault injection: resending every acked batch with its original seq"
    );
    let s2 = rt.block_on(Uplink::new(cfg)?.upload_all(batches));
    info!(batches_acked = s2.batches_acked, "duplicate batches acked");
    Ok(())
}
