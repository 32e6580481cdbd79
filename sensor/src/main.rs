//! `tidewatch-sensor`: meters OT traffic into flow records and uploads them to
//! the tidewatch collector over mutually authenticated gRPC.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use tidewatch_proto::v1::{AssetObservation, FlowRecord, SensorStatus};
use tidewatch_sensor::assets::{AssetTable, Oui};
use tidewatch_sensor::batch::{now_us, BatchConfig, Batcher, Class, PreparedBatch, SeqStore};
use tidewatch_sensor::budget::{BudgetConfig, DailyBudget};
use tidewatch_sensor::buffer::classed::class_dir;
use tidewatch_sensor::buffer::{
    inspect, repair, BufferConfig, ClassedBuffer, Fsync, Reader, Stored, WhenFull,
};
use tidewatch_sensor::capture::CaptureError;
use tidewatch_sensor::flow::{FlowConfig, FlowTable};
use tidewatch_sensor::output::{asset_json, write_flow_json};
use tidewatch_sensor::pipeline::{meter_file, meter_live, FileMetered, Progress};
use tidewatch_sensor::uplink::{Uplink, UplinkConfig, UplinkCounters};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "tidewatch-sensor",
    version,
    about = "Meters OT network traffic into bidirectional flow records and uploads them to the tidewatch collector",
    long_about = "Meters OT network traffic into bidirectional flow records and uploads them to the \
tidewatch collector over mutually authenticated gRPC.\n\n\
Every `run` option can also be set in the environment as TIDEWATCH_<OPTION> (e.g. \
--batch-flows as TIDEWATCH_BATCH_FLOWS), which is how the systemd unit reads \
/etc/tidewatch/sensor.env; command-line options win.\n\n\
`read` inspects a capture locally (no upload); `run` meters a capture and uploads the flows, \
waiting until the collector has acknowledged every batch (an ack means the batch is in Kafka).\n\n\
Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more detail."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct MeterArgs {
    /// Seconds without a packet after which a flow is emitted.
    #[arg(
        long,
        env = "TIDEWATCH_IDLE_TIMEOUT",
        default_value_t = 120.0,
        value_name = "SECS"
    )]
    idle_timeout: f64,
    /// Seconds after which a long flow is emitted and restarted (delta records).
    #[arg(
        long,
        env = "TIDEWATCH_ACTIVE_TIMEOUT",
        default_value_t = 1800.0,
        value_name = "SECS"
    )]
    active_timeout: f64,
    /// Hard cap on concurrent flows; the least recently seen are evicted beyond it.
    #[arg(long, env = "TIDEWATCH_MAX_FLOWS", default_value_t = 262_144)]
    max_flows: usize,
    /// IEEE OUI registry (CSV) for asset vendors; Debian's ieee-data package
    /// installs it at the default path. Missing file: vendors stay empty.
    #[arg(
        long,
        env = "TIDEWATCH_OUI_FILE",
        default_value = "/usr/share/ieee-data/oui.csv",
        value_name = "CSV"
    )]
    oui_file: PathBuf,
}

impl MeterArgs {
    fn flow_config(&self) -> anyhow::Result<FlowConfig> {
        for (name, v) in [
            ("--idle-timeout", self.idle_timeout),
            ("--active-timeout", self.active_timeout),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} must be a positive number of seconds, got {v}");
            }
        }
        if self.max_flows == 0 {
            bail!("--max-flows must be at least 1");
        }
        Ok(FlowConfig {
            idle_timeout_us: (self.idle_timeout * 1e6) as i64,
            active_timeout_us: (self.active_timeout * 1e6) as i64,
            max_flows: self.max_flows,
            ..FlowConfig::default()
        })
    }

    /// A flow table, with the asset inventory when `assets` is set.
    fn table(&self, assets: bool) -> anyhow::Result<FlowTable> {
        let table = FlowTable::new(self.flow_config()?);
        if !assets {
            return Ok(table);
        }
        let oui = match Oui::load(&self.oui_file) {
            Ok(o) => o,
            Err(e) => {
                warn!(file = %self.oui_file.display(), error = %e,
                    "IEEE OUI registry not readable; asset vendors stay empty (install Debian's ieee-data or pass --oui-file)");
                Oui::default()
            }
        };
        Ok(table.with_assets(AssetTable::new(oui)))
    }
}

/// Live capture instead of a file.
#[derive(clap::Args, Clone)]
struct LiveArgs {
    /// Capture live on this network interface (needs CAP_NET_RAW) instead of
    /// reading a file; stops on SIGTERM/SIGINT and flushes every flow.
    #[arg(long, env = "TIDEWATCH_INTERFACE", value_name = "IFACE")]
    interface: Option<String>,
    /// BPF capture filter in tcpdump syntax (live capture only).
    #[arg(
        long,
        env = "TIDEWATCH_FILTER",
        value_name = "BPF",
        requires = "interface"
    )]
    filter: Option<String>,
}

/// Counters of one metering run.
struct Metered {
    frames: u64,
    kernel_drops: u64,
    flows: u64,
    /// Why reading the capture file stopped early (corrupt or truncated
    /// record, read error); the frames before were metered and flushed.
    cut: Option<CaptureError>,
}

impl Metered {
    /// The error to exit with once the flows before an early stop have
    /// been delivered (`what`: where they went).
    fn cut_error(self, file: Option<&PathBuf>, what: &str) -> anyhow::Result<()> {
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
struct Control<'a> {
    /// Set on SIGTERM/SIGINT: stop reading, flush every flow.
    stop: &'a AtomicBool,
    /// Live capture: stop after this long.
    duration: Option<Duration>,
    /// File replay speed (None: as fast as possible).
    pace: Option<f64>,
    /// Running totals for metrics and status records.
    progress: &'a Progress,
}

/// Meters the file or the live interface, handing records to `sink`.
fn meter(
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
        info!(interface = %iface, filter = ?live.filter, "live capture started");
        let (cap, flows, k) = meter_live(
            iface,
            live.filter.as_deref(),
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
fn stop_flag(rt: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    rt.spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %e, "cannot install SIGTERM handler");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; flushing flows"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received; flushing flows"),
        }
        f.store(true, Ordering::Relaxed);
    });
    flag
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One JSON object per flow, one per line.
    Json,
}

#[derive(Subcommand)]
enum BufferCmd {
    /// Verify every segment (length and CRC of each record); exit 1 on damage.
    Check,
    /// Rewrite damaged segments keeping only their valid records.
    Repair,
    /// Show size, backlog and acked position.
    Stats,
}

// Parsed once at start; boxing the large `Run` variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Estimate what a capture costs on the link: meter it, build the batches
    /// `run` would send (same encoding and compression) and print the bytes
    /// per flow record as JSON; nothing is uploaded.
    Estimate {
        /// Capture file (pcap or pcapng).
        file: PathBuf,
        /// Maximum flow records per batch, as for `run`.
        #[arg(long, default_value_t = 2000)]
        batch_flows: usize,
        /// Estimate without compression.
        #[arg(long)]
        no_compress: bool,
        #[command(flatten)]
        meter: MeterArgs,
    },
    /// Inspect or repair the disk buffer (STATE_DIR/buffer) while the sensor is stopped.
    Buffer {
        /// The sensor's state directory.
        #[arg(
            long,
            global = true,
            env = "TIDEWATCH_STATE_DIR",
            default_value = "/var/lib/tidewatch-sensor"
        )]
        state_dir: PathBuf,
        #[command(subcommand)]
        cmd: BufferCmd,
    },
    /// Meter a capture file (pcap or pcapng) or a live interface and print its flows; nothing is uploaded.
    Read {
        /// Capture file; the format is detected from its magic bytes.
        #[arg(required_unless_present = "interface", conflicts_with = "interface")]
        file: Option<PathBuf>,
        #[command(flatten)]
        live: LiveArgs,
        /// Stop live capture after this many seconds.
        #[arg(long, value_name = "SECS", requires = "interface")]
        duration: Option<f64>,
        /// Replay the file at this multiple of its recorded speed (1 = as
        /// captured); default: as fast as possible.
        #[arg(long, value_name = "FACTOR", conflicts_with = "interface")]
        replay_speed: Option<f64>,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
        /// Print the asset inventory (one JSON object per asset) instead of flows.
        #[arg(long)]
        assets: bool,
        #[command(flatten)]
        meter: MeterArgs,
    },
    /// Meter a capture file or a live interface and upload its flows to the collector.
    Run {
        /// Capture file to replay (pcap or pcapng).
        #[arg(
            long,
            env = "TIDEWATCH_PCAP",
            value_name = "FILE",
            required_unless_present = "interface",
            conflicts_with = "interface"
        )]
        pcap: Option<PathBuf>,
        #[command(flatten)]
        live: LiveArgs,
        /// Replay the capture file at this multiple of its recorded speed
        /// (1 = as captured); default: as fast as possible.
        #[arg(
            long,
            env = "TIDEWATCH_REPLAY_SPEED",
            value_name = "FACTOR",
            conflicts_with = "interface"
        )]
        replay_speed: Option<f64>,
        /// Collector ingest endpoint.
        #[arg(
            long,
            env = "TIDEWATCH_COLLECTOR",
            value_name = "URL",
            default_value = "https://127.0.0.1:4443"
        )]
        collector: String,
        /// Name the collector certificate must carry (default: host of --collector).
        #[arg(long, env = "TIDEWATCH_SERVER_NAME")]
        server_name: Option<String>,
        /// Fleet CA certificate (PEM) that signed the collector's certificate.
        #[arg(long, env = "TIDEWATCH_CA", value_name = "PEM")]
        ca: PathBuf,
        /// This sensor's certificate (PEM), issued by `tidewatch-collector pki issue-sensor`.
        #[arg(long, env = "TIDEWATCH_CERT", value_name = "PEM")]
        cert: PathBuf,
        /// This sensor's private key (PEM).
        #[arg(long, env = "TIDEWATCH_KEY", value_name = "PEM")]
        key: PathBuf,
        /// Directory for persistent state (batch sequence counter).
        #[arg(
            long,
            env = "TIDEWATCH_STATE_DIR",
            default_value = "/var/lib/tidewatch-sensor"
        )]
        state_dir: PathBuf,
        /// Maximum flow records per batch.
        #[arg(long, env = "TIDEWATCH_BATCH_FLOWS", default_value_t = 2000)]
        batch_flows: usize,
        /// Batches in flight before waiting for acks.
        #[arg(long, env = "TIDEWATCH_WINDOW", default_value_t = 8)]
        window: usize,
        /// Send batches uncompressed (default: zstd).
        #[arg(long, env = "TIDEWATCH_NO_COMPRESS")]
        no_compress: bool,
        /// Seconds to wait for an ack before reconnecting and resending.
        #[arg(long, env = "TIDEWATCH_ACK_TIMEOUT", default_value_t = 30.0)]
        ack_timeout: f64,
        /// HTTP/2 keepalive: ping after this many idle seconds and give the
        /// connection up when no answer comes within as many seconds again
        /// (detects a link that silently drops everything).
        #[arg(
            long,
            env = "TIDEWATCH_KEEPALIVE_SECS",
            default_value_t = 10.0,
            value_name = "SECS"
        )]
        keepalive_secs: f64,
        /// Upload rate limit in bytes per second (0 = unlimited), so the
        /// sensor leaves room on a narrow link.
        #[arg(
            long,
            env = "TIDEWATCH_RATE_LIMIT",
            default_value_t = 0,
            value_name = "BYTES_PER_SEC"
        )]
        rate_limit: u64,
        /// Daily byte budget of the uplink (UTC day; batch payload bytes,
        /// resends included); 0 = none. When it is tight, sensor status and
        /// assets go first, then flows with OT write/control operations,
        /// then the rest; what does not fit waits on disk for the next day.
        #[arg(
            long,
            env = "TIDEWATCH_DAILY_BUDGET_BYTES",
            default_value_t = 0,
            value_name = "BYTES"
        )]
        daily_budget_bytes: u64,
        /// Percent of the daily budget kept for status, assets and OT-write
        /// flows: bulk flows stop when the rest is used.
        #[arg(
            long,
            env = "TIDEWATCH_BUDGET_RESERVE_PERCENT",
            default_value_t = 10,
            value_name = "PERCENT"
        )]
        budget_reserve_percent: u8,
        /// Length of a budget "day" in seconds (tests compress time).
        #[arg(long, hide = true, default_value_t = 86_400.0)]
        budget_period_secs: f64,
        /// Seal a batch from whatever records are pending after this many
        /// seconds, so that a quiet network's flows reach the disk buffer
        /// (and the shore) without waiting for a full batch.
        #[arg(
            long,
            env = "TIDEWATCH_FLUSH_INTERVAL",
            default_value_t = 10.0,
            value_name = "SECS"
        )]
        flush_interval: f64,
        /// Send a SensorStatus record (capture and buffer counters, drops)
        /// every this many seconds, and once at the end.
        #[arg(
            long,
            env = "TIDEWATCH_STATUS_INTERVAL",
            default_value_t = 60.0,
            value_name = "SECS"
        )]
        status_interval: f64,
        /// Serve Prometheus metrics (/metrics) and liveness (/healthz) over
        /// plain HTTP on this address, e.g. 127.0.0.1:9464 (default: off).
        #[arg(long, env = "TIDEWATCH_METRICS_LISTEN", value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        meter: MeterArgs,
        #[command(flatten)]
        buffer: BufferArgs,
        /// Fault injection for tests: after every batch is acked, send them all
        /// again with their original seq (the shore must drop the duplicates).
        #[arg(long, hide = true)]
        resend_acked: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Read {
            file,
            live,
            duration,
            replay_speed,
            format,
            assets,
            meter,
        } => read(file, live, duration, replay_speed, format, assets, meter),
        Cmd::Run { .. } => run(cli.cmd),
        Cmd::Estimate {
            file,
            batch_flows,
            no_compress,
            meter,
        } => estimate(&file, batch_flows, no_compress, meter),
        Cmd::Buffer { state_dir, cmd } => buffer_cmd(&state_dir.join("buffer"), cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One plain line (as the collector does), not a log line as well.
            eprintln!("tidewatch-sensor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read(
    file: Option<PathBuf>,
    live: LiveArgs,
    duration: Option<f64>,
    replay_speed: Option<f64>,
    _format: Format,
    assets: bool,
    meter_args: MeterArgs,
) -> anyhow::Result<()> {
    let duration = duration
        .map(|d| {
            if d.is_finite() && d > 0.0 {
                Ok(Duration::from_secs_f64(d))
            } else {
                Err(anyhow::anyhow!(
                    "--duration must be a positive number of seconds"
                ))
            }
        })
        .transpose()?;
    if replay_speed.is_some_and(|x| !(x.is_finite() && x > 0.0)) {
        bail!("--replay-speed must be a positive number");
    }
    let mut table = meter_args.table(assets)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    let stop = if live.interface.is_some() {
        let flag = stop_flag(&rt);
        // Drive the signal task on a helper thread.
        let handle = rt.handle().clone();
        std::thread::spawn(move || handle.block_on(std::future::pending::<()>()));
        flag
    } else {
        Arc::new(AtomicBool::new(false))
    };
    // Records are formatted and written on their own thread, so printing
    // overlaps metering.
    // Printed records go back to the table, which fills them again.
    let (to_writer, chunks) = std::sync::mpsc::sync_channel::<Vec<FlowRecord>>(1);
    let (back, printed) = std::sync::mpsc::sync_channel::<Vec<FlowRecord>>(1);
    table.recycle_from(printed);
    let writer = std::thread::Builder::new()
        .name("read-output".into())
        .spawn(move || -> std::io::Result<()> {
            let mut out = std::io::stdout().lock();
            let mut buf = Vec::with_capacity(1 << 20);
            for recs in chunks {
                for r in &recs {
                    write_flow_json(&mut buf, r);
                }
                out.write_all(&buf)?;
                out.flush()?;
                buf.clear();
                let _ = back.try_send(recs);
            }
            Ok(())
        })?;
    let m = meter(
        file.as_ref(),
        &live,
        &mut table,
        Control {
            stop: &stop,
            duration,
            pace: replay_speed,
            progress: &Progress::default(),
        },
        |recs, _| {
            if !assets && !recs.is_empty() && to_writer.send(recs).is_err() {
                bail!("output closed");
            }
            Ok(())
        },
    );
    drop(to_writer);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("output thread panicked"))?;
    // A write error (such as a closed pipe) explains a stopped metering run.
    written.context("writing flows")?;
    let m = m?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some(inv) = table.assets() {
        for a in inv.all() {
            serde_json::to_writer(&mut out, &asset_json(&a))?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    if live.interface.is_some() {
        info!(
            frames = m.frames,
            kernel_drops = m.kernel_drops,
            flows = m.flows,
            "live capture stopped"
        );
    }
    let delivered = if assets {
        "metered, and the inventory printed"
    } else {
        "printed"
    };
    m.cut_error(file.as_ref(), delivered)
}

fn estimate(
    file: &std::path::Path,
    batch_flows: usize,
    no_compress: bool,
    meter_args: MeterArgs,
) -> anyhow::Result<()> {
    if batch_flows == 0 {
        bail!("--batch-flows must be at least 1");
    }
    let mut table = meter_args.table(true)?;
    let scratch = std::env::temp_dir().join(format!("tidewatch-estimate-{}", std::process::id()));
    let mut batcher = Batcher::new(
        BatchConfig {
            max_flows: batch_flows,
            compress: !no_compress,
            ..BatchConfig::default()
        },
        SeqStore::open(&scratch)?,
    );
    let (mut flows, mut assets, mut batches, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut count = |b: PreparedBatch| {
        batches += 1;
        // gRPC frame (5) + UploadRequest fields (seq, encoding, payload tag+len).
        bytes += b.request.payload.len() as u64 + 5 + 16;
    };
    let stop = AtomicBool::new(false);
    let metered = meter_file(
        file,
        &mut table,
        None,
        &stop,
        &Progress::default(),
        |recs, a| {
            flows += recs.len() as u64;
            assets += a.len() as u64;
            for b in batcher.push(recs, a)? {
                count(b);
            }
            Ok(())
        },
    )
    .with_context(|| format!("reading {}", file.display()));
    let last = metered.and_then(|m| match m.cut {
        // An estimate from part of a file would be misleading.
        Some(e) => Err(anyhow::Error::new(e).context(format!("reading {}", file.display()))),
        None => Ok(batcher.flush(None)?),
    });
    let _ = std::fs::remove_dir_all(&scratch);
    for b in last? {
        count(b);
    }
    let per_flow = if flows > 0 {
        bytes as f64 / flows as f64
    } else {
        0.0
    };
    println!(
        "{}",
        serde_json::json!({
            "flows": flows, "assets": assets, "batches": batches, "bytes": bytes,
            "bytes_per_flow": (per_flow * 100.0).round() / 100.0,
            "compressed": !no_compress,
        })
    );
    Ok(())
}

/// Streams the disk buffer to the uplink: every stored batch after the
/// acked cursor, then new ones as they are appended, until metering is done
/// and everything on disk has been handed over.
/// Streams the disk buffer to the uplink: always the highest-priority
/// class that has a batch waiting and that the daily budget allows (booked
/// as reserved here and charged when the uplink sends it, so the budget
/// holds batches back on disk, not in the uplink's window). Returns when metering is done and every class is
/// drained.
fn feed(
    mut readers: Vec<(Class, Reader)>,
    budget: Arc<Mutex<DailyBudget>>,
    tx: mpsc::Sender<PreparedBatch>,
    metering_done: &AtomicBool,
) {
    let mut next: Vec<Option<Stored>> = readers.iter().map(|_| None).collect();
    let mut held_back = false;
    loop {
        // Appends that happened before the flag are visible after it.
        let done = metering_done.load(Ordering::SeqCst);
        for (i, (class, r)) in readers.iter_mut().enumerate() {
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
        let pick = {
            let mut b = budget.lock().expect("budget lock");
            let pick = next.iter().enumerate().find_map(|(i, n)| {
                let n = n.as_ref()?;
                let bytes = n.request.payload.len() as u64;
                b.allows(readers[i].0, bytes).then_some((i, bytes))
            });
            if let Some((_, bytes)) = pick {
                b.reserve(bytes);
            }
            if let Err(e) = b.persist_if_due() {
                warn!(error = %e, "cannot record budget use");
            }
            pick
        };
        let Some((i, _)) = pick else {
            let (used, limit, wait) = {
                let mut b = budget.lock().expect("budget lock");
                (b.used(), b.limit(), b.until_next_period())
            };
            if !held_back {
                let waiting: Vec<&str> = readers
                    .iter()
                    .zip(&next)
                    .filter(|(_, n)| n.is_some())
                    .map(|((c, _), _)| c.name())
                    .collect();
                warn!(used, limit, ?waiting, next_day_in = ?wait,
                    "daily byte budget reached; holding batches in the disk buffer");
                held_back = true;
            }
            std::thread::sleep(wait.min(Duration::from_millis(500)));
            continue;
        };
        if held_back {
            info!("budget allows sending again");
            held_back = false;
        }
        let b = next[i].take().expect("picked");
        if tx.blocking_send(b.into_prepared(readers[i].0)).is_err() {
            return;
        }
    }
}

fn buffer_cmd(dir: &std::path::Path, cmd: BufferCmd) -> anyhow::Result<()> {
    let mut damaged = 0;
    let mut total = (0u64, 0u64, 0u64);
    for class in Class::ALL {
        let cdir = class_dir(dir, class);
        if !cdir.is_dir() {
            println!("buffer {} ({}): empty", cdir.display(), class.name());
            continue;
        }
        match cmd {
            BufferCmd::Stats | BufferCmd::Check => {
                let (segments, bytes, pending, bad) = print_buffer(&cdir, class)?;
                total = (total.0 + segments, total.1 + bytes, total.2 + pending);
                damaged += bad;
            }
            BufferCmd::Repair => {
                let n = repair(&cdir)?;
                println!("removed {n} damaged record(s) from {}", cdir.display());
            }
        }
    }
    if !matches!(cmd, BufferCmd::Repair) {
        println!(
            "total: {} segments, {} bytes, {} batches not yet acked, {} damaged records",
            total.0, total.1, total.2, damaged
        );
    }
    if matches!(cmd, BufferCmd::Check) && damaged > 0 {
        bail!(
            "{damaged} damaged record(s); the sensor skips them on start, or run `buffer repair`"
        );
    }
    Ok(())
}

/// Prints one class's segments; returns its segments, bytes, pending
/// batches and damaged records.
fn print_buffer(dir: &std::path::Path, class: Class) -> anyhow::Result<(u64, u64, u64, u64)> {
    let ins = inspect(dir)?;
    let pending: u64 = ins.segments.iter().map(|s| s.pending_records).sum();
    let bytes: u64 = ins.segments.iter().map(|s| s.bytes).sum();
    for s in &ins.segments {
        println!(
            "{}  {} bytes  {} batches ({} flows)  seq {}..{}  pending {}  corrupt {}{}{}",
            s.path.display(),
            s.bytes,
            s.records,
            s.flows,
            s.first_seq
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into()),
            s.last_seq
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into()),
            s.pending_records,
            s.corrupt,
            if s.torn_tail_bytes > 0 {
                format!("  torn tail {} bytes", s.torn_tail_bytes)
            } else {
                String::new()
            },
            if s.bad_header {
                "  UNREADABLE HEADER"
            } else {
                ""
            },
        );
    }
    println!(
        "buffer {} ({}): {} segments, {} bytes, {} batches not yet acked, acked up to seq {}, {} damaged records",
        dir.display(),
        class.name(),
        ins.segments.len(),
        bytes,
        pending,
        ins.acked,
        ins.corrupt()
    );
    Ok((ins.segments.len() as u64, bytes, pending, ins.corrupt()))
}

/// Disk buffer settings of `run`.
#[derive(clap::Args, Clone)]
struct BufferArgs {
    /// Hard cap on the disk buffer (STATE_DIR/buffer), in MiB (at least 1).
    #[arg(
        long,
        env = "TIDEWATCH_BUFFER_MAX_MIB",
        default_value_t = 256,
        value_name = "MIB"
    )]
    buffer_max_mib: u64,
    /// When buffered data is forced to disk: every-batch, interval or never.
    #[arg(long, env = "TIDEWATCH_FSYNC", value_enum, default_value = "interval")]
    fsync: FsyncArg,
    /// With --fsync interval: at most this many milliseconds of data can be
    /// lost on power failure.
    #[arg(
        long,
        env = "TIDEWATCH_FSYNC_INTERVAL_MS",
        default_value_t = 1000,
        value_name = "MS"
    )]
    fsync_interval_ms: u64,
    /// What to drop when the buffer is full.
    #[arg(
        long,
        env = "TIDEWATCH_WHEN_FULL",
        value_enum,
        default_value = "drop-oldest"
    )]
    when_full: WhenFullArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum FsyncArg {
    EveryBatch,
    Interval,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
enum WhenFullArg {
    DropOldest,
    DropNewest,
}

impl BufferArgs {
    fn config(&self, state_dir: &std::path::Path) -> anyhow::Result<BufferConfig> {
        if self.buffer_max_mib == 0 {
            bail!("--buffer-max-mib must be at least 1");
        }
        Ok(BufferConfig {
            dir: state_dir.join("buffer"),
            max_bytes: self.buffer_max_mib.saturating_mul(1024 * 1024),
            fsync: match self.fsync {
                FsyncArg::EveryBatch => Fsync::EveryBatch,
                FsyncArg::Interval => {
                    Fsync::Interval(Duration::from_millis(self.fsync_interval_ms))
                }
                FsyncArg::Never => Fsync::Never,
            },
            when_full: match self.when_full {
                WhenFullArg::DropOldest => WhenFull::DropOldest,
                WhenFullArg::DropNewest => WhenFull::DropNewest,
            },
        })
    }
}

fn read_file(what: &str, p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {what} {}", p.display()))
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    let Cmd::Run {
        pcap,
        live,
        replay_speed,
        collector,
        server_name,
        ca,
        cert,
        key,
        state_dir,
        batch_flows,
        window,
        no_compress,
        ack_timeout,
        keepalive_secs,
        rate_limit,
        daily_budget_bytes,
        budget_reserve_percent,
        budget_period_secs,
        flush_interval,
        status_interval,
        metrics_listen,
        meter: meter_args,
        buffer,
        resend_acked,
    } = cmd
    else {
        unreachable!()
    };
    let mut table = meter_args.table(true)?;
    if replay_speed.is_some_and(|x| !(x.is_finite() && x > 0.0)) {
        bail!("--replay-speed must be a positive number");
    }
    if batch_flows == 0 || window == 0 {
        bail!("--batch-flows and --window must be at least 1");
    }
    if !(ack_timeout.is_finite() && ack_timeout > 0.0) {
        bail!("--ack-timeout must be a positive number of seconds");
    }
    for (name, v) in [
        ("--keepalive-secs", keepalive_secs),
        ("--flush-interval", flush_interval),
        ("--status-interval", status_interval),
        ("--budget-period-secs", budget_period_secs),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bail!("{name} must be a positive number of seconds, got {v}");
        }
    }
    let uplink_cfg = UplinkConfig {
        endpoint: collector,
        server_name,
        ca_pem: read_file("CA certificate", &ca)?,
        cert_pem: read_file("sensor certificate", &cert)?,
        key_pem: read_file("sensor key", &key)?,
        window,
        connect_timeout: Duration::from_secs(10),
        ack_timeout: Duration::from_secs_f64(ack_timeout),
        keepalive_interval: Duration::from_secs_f64(keepalive_secs),
        keepalive_timeout: Duration::from_secs_f64(keepalive_secs),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(30),
        rate_limit,
    };
    let seqs = SeqStore::open(&state_dir)?;
    let budget = DailyBudget::open(
        &state_dir,
        BudgetConfig {
            daily_bytes: daily_budget_bytes,
            reserve_percent: budget_reserve_percent,
            period: Duration::from_secs_f64(budget_period_secs),
        },
    )
    .context("--budget-reserve-percent")?;
    let budget = Arc::new(Mutex::new(budget));
    let mut batcher = Batcher::new(
        BatchConfig {
            max_flows: batch_flows,
            compress: !no_compress,
            ..BatchConfig::default()
        },
        seqs,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // Every batch goes to the disk buffer first; a feeder thread streams the
    // buffer (from the first unacked batch, including those left by an
    // earlier run) to the uplink; finished batches are forgotten by the
    // buffer as the uplink reports them.
    let (disk, opened) = ClassedBuffer::open(buffer.config(&state_dir)?)?;
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
    let readers: Vec<(Class, Reader)> = Class::ALL.iter().map(|c| (*c, disk.reader(*c))).collect();
    let disk = Arc::new(Mutex::new(disk));
    let (tx, rx) = mpsc::channel::<PreparedBatch>(window * 2);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Class, u64)>();
    let counters = Arc::new(UplinkCounters::default());
    let progress = Arc::new(Progress::default());
    let metrics_task = match metrics_listen {
        Some(addr) => {
            let reg = tidewatch_sensor::metrics::registry(
                progress.clone(),
                counters.clone(),
                disk.clone(),
                budget.clone(),
            );
            let (local, task) = rt
                .block_on(tidewatch_proto::metrics::serve(
                    addr,
                    reg,
                    Arc::new(|| Ok(())),
                ))
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            info!(listen = %local, "metrics at http://{local}/metrics");
            Some(task)
        }
        None => None,
    };
    let uplink = Uplink::new(uplink_cfg.clone())?
        .with_done_channel(done_tx)
        .with_counters(counters.clone())
        .with_budget(budget.clone());
    let upload = rt.spawn(uplink.run(rx));
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
        let done = metering_done.clone();
        let budget = budget.clone();
        std::thread::spawn(move || feed(readers, budget, tx, &done))
    };

    // Metering runs on this thread; the disk buffer absorbs any backlog.
    let keep = resend_acked;
    let mut sent: Vec<PreparedBatch> = Vec::new();
    let mut total_flows = 0u64;
    let mut push = |b: PreparedBatch| -> anyhow::Result<()> {
        total_flows += b.flows as u64;
        if keep {
            sent.push(b.clone());
        }
        let mut d = disk.lock().expect("buffer lock");
        let before = d.stats().dropped_batches;
        if !d.append(&b)? {
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
    };
    let stop = stop_flag(&rt);
    let status = |p: &Progress| {
        let bs = disk.lock().expect("buffer lock").stats();
        let (sent_today, limit) = {
            let mut b = budget.lock().expect("budget lock");
            (b.used(), b.limit())
        };
        SensorStatus {
            bytes_sent_today: sent_today,
            daily_byte_budget: limit,
            observed_us: now_us(),
            capture_packets: Progress::get(&p.frames),
            capture_drops: Progress::get(&p.kernel_drops),
            flows_evicted: Progress::get(&p.flows_evicted),
            buffer_backlog_bytes: bs.bytes,
            buffer_backlog_records: bs.pending_flows,
            records_dropped: bs.dropped_flows,
            software_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    };
    let flush_every = Duration::from_secs_f64(flush_interval);
    let status_every = Duration::from_secs_f64(status_interval);
    let mut last_flush = std::time::Instant::now();
    let mut last_status = std::time::Instant::now();
    let m = meter(
        pcap.as_ref(),
        &live,
        &mut table,
        Control {
            stop: &stop,
            duration: None,
            pace: replay_speed,
            progress: &progress,
        },
        |recs, assets| {
            for b in batcher.push(recs, assets)? {
                push(b)?;
                last_flush = std::time::Instant::now();
            }
            let due_status = last_status.elapsed() >= status_every;
            if due_status || last_flush.elapsed() >= flush_every {
                let st = due_status.then(|| status(&progress));
                for b in batcher.flush(st)? {
                    push(b)?;
                }
                last_flush = std::time::Instant::now();
                if due_status {
                    last_status = last_flush;
                }
            }
            Ok(())
        },
    )?;
    debug_assert_eq!(Progress::get(&progress.frames), m.frames);
    for b in batcher.flush(Some(status(&progress)))? {
        push(b)?;
    }
    {
        let mut disk = disk.lock().expect("buffer lock");
        disk.sync()?;
        let bs = disk.stats();
        info!(
            pending_batches = bs.pending_batches,
            pending_flows = bs.pending_flows,
            "metering done; every record is in the disk buffer"
        );
    }
    metering_done.store(true, Ordering::SeqCst);
    // Wait for the last acks. Signalled (before or meanwhile): everything is
    // on disk and the next start resumes from the first unacked batch, so
    // there is no need to wait for the link.
    let finished = rt.block_on(async {
        let mut upload = upload;
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
    if let Err(e) = budget.lock().expect("budget lock").persist() {
        warn!(error = %e, "cannot record budget use");
    }
    let Some(stats) = finished else {
        let bs = disk.lock().expect("buffer lock").stats();
        info!(
            pending_batches = bs.pending_batches,
            pending_flows = bs.pending_flows,
            "stopping; unacknowledged batches stay in the disk buffer for the next start"
        );
        return m.cut_error(pcap.as_ref(), "stored in the disk buffer");
    };
    let stats = stats?;
    rt.block_on(acker)?;
    if feeder.join().is_err() {
        bail!("buffer feeder thread panicked");
    }
    let bs = disk.lock().expect("buffer lock").stats();
    info!(
        frames = m.frames,
        flows = total_flows,
        batches_acked = stats.batches_acked,
        flows_acked = stats.flows_acked,
        batches_rejected = stats.batches_rejected,
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
    if resend_acked {
        info!(
            batches = sent.len(),
            "fault injection: resending every acked batch with its original seq"
        );
        let (tx, rx) = mpsc::channel::<PreparedBatch>(window * 2);
        let again = rt.spawn(Uplink::new(uplink_cfg)?.run(rx));
        for b in sent {
            tx.blocking_send(b)
                .map_err(|_| anyhow::anyhow!("uplink stopped"))?;
        }
        drop(tx);
        let s2 = rt.block_on(again)?;
        info!(batches_acked = s2.batches_acked, "duplicate batches acked");
    }
    if stats.batches_rejected > 0 {
        bail!(
            "the collector refused {} batch(es) ({} flows); see the log above",
            stats.batches_rejected,
            stats.flows_rejected
        );
    }
    m.cut_error(pcap.as_ref(), "uploaded")
}
