//! Metering as the subcommands drive it: a capture file or a live
//! interface through the flow table, records handed to a closure; and the
//! stop flag set by SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tidewatch_proto::v1::{AssetObservation, FlowRecord};
use tidewatch_sensor::capture::CaptureError;
use tidewatch_sensor::capture::LiveConfig;
use tidewatch_sensor::flow::FlowTable;
use tidewatch_sensor::pipeline::{meter_file, meter_live, FileMetered, Progress};
use tracing::{info, warn};

use super::LiveArgs;

/// Counters of one metering run.
pub struct Metered {
    pub frames: u64,
    pub kernel_drops: u64,
    pub flows: u64,
    /// Why reading the capture file stopped early (corrupt or truncated
    /// record, read error); the frames before were metered and flushed.
    pub cut: Option<CaptureError>,
}

impl Metered {
    /// The error to exit with once the flows before an early stop have
    /// been delivered (`what`: where they went).
    pub fn cut_error(self, file: Option<&PathBuf>, what: &str) -> anyhow::Result<()> {
        match self.cut {
            None => Ok(()),
            Some(e) => Err(anyhow::Error::new(e).context(format!(
                "reading {} stopped early; the {} frames before were metered and \
                 their {} flows {what}",
                file.map(|f| f.display().to_string()).unwrap_or_default(),
                self.frames,
                self.flows
            ))),
        }
    }
}

/// How a metering run is driven.
pub struct Control<'a> {
    /// Set on SIGTERM/SIGINT: stop reading, flush every flow.
    pub stop: &'a AtomicBool,
    /// Live capture: stop after this long.
    pub duration: Option<Duration>,
    /// File replay speed (None: as fast as possible).
    pub pace: Option<f64>,
    /// Running totals for metrics and status records.
    pub progress: &'a Progress,
}

/// Meters the file or the live interface, handing records to `sink`.
pub fn meter(
    file: Option<&PathBuf>,
    live: &LiveArgs,
    table: &mut FlowTable,
    ctl: Control<'_>,
    sink: impl FnMut(Vec<FlowRecord>, Vec<AssetObservation>) -> anyhow::Result<()>,
) -> anyhow::Result<Metered> {
    let Control {
        stop,
        duration,
        pace,
        progress,
    } = ctl;
    if let Some(iface) = &live.interface {
        let (cap, flows, k) = meter_live(
            LiveConfig {
                iface,
                filter: live.filter.as_deref(),
                buffer_bytes: live.capture_buffer_mib as usize * 1024 * 1024,
            },
            table,
            stop,
            duration,
            progress,
            sink,
        )?;
        return Ok(Metered {
            frames: cap.frames,
            kernel_drops: k.dropped,
            flows: flows.records_emitted,
            cut: None,
        });
    }
    let file = file.ok_or_else(|| anyhow::anyhow!("give a capture file or --interface"))?;
    let FileMetered {
        capture: cap,
        flows,
        cut,
    } = meter_file(file, table, pace, stop, progress, sink)
        .with_context(|| format!("reading {}", file.display()))?;
    if let Some(e) = &cut {
        warn!(file = %file.display(), error = %e, frames_before = cap.frames,
            "capture read stopped early (corrupt, truncated or unreadable); metered everything before");
    }
    info!(
        frames = cap.frames,
        ip_packets = cap.ip_packets,
        non_ip = cap.non_ip_frames + cap.arp_frames,
        malformed = cap.malformed,
        flows = flows.records_emitted,
        fragments_overflow = flows.fragments_overflow,
        "capture metered"
    );
    Ok(Metered {
        frames: cap.frames,
        kernel_drops: 0,
        flows: flows.records_emitted,
        cut,
    })
}

/// A flag set on SIGTERM or SIGINT (handled on `rt`).
pub fn stop_flag(rt: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    use tokio::signal::unix::{signal, SignalKind};
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // The handlers are in place when this returns (installed here, not
    // when the task first runs); `rt` must have a worker thread to run it.
    let _ctx = rt.enter();
    let handlers =
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    let (mut term, mut int) = match handlers {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "cannot install SIGTERM/SIGINT handlers");
            return flag;
        }
    };
    rt.spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; flushing flows"),
            _ = int.recv() => info!("SIGINT received; flushing flows"),
        }
        f.store(true, Ordering::Relaxed);
    });
    flag
}
