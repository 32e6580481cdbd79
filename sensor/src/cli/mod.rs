//! The command line of `tidewatch-sensor`: every subcommand's options as
//! one struct each (flattening the groups they share), and one file per
//! subcommand that runs it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use tidewatch_proto::codec::Layout;
use tidewatch_sensor::assets::{AssetTable, Oui};
use tidewatch_sensor::batch::{BatchConfig, DEFAULT_BATCH_FLOWS, DEFAULT_BATCH_MAX_BYTES};
use tidewatch_sensor::buffer::{BufferConfig, Fsync, WhenFull};
use tidewatch_sensor::flow::{FlowConfig, FlowTable};
use tracing::warn;

pub mod buffer;
pub mod enroll;
pub mod estimate;
mod metering;
pub mod read;
pub mod run;

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
waiting until the collector has acknowledged every batch (an ack means the batch is in Kafka). \
`enroll` makes the sensor's key (it never leaves the box) and the request the shore signs; \
`run` renews the certificate over the link before it expires.\n\n\
Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more detail."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Meter a capture file (pcap or pcapng) or a live interface and print its flows; nothing is uploaded.
    Read(ReadArgs),
    /// Meter a capture file or a live interface and upload its flows to the collector.
    Run(Box<RunArgs>),
    /// Estimate what a capture costs on the link: meter it, build the batches
    /// `run` would send (same encoding and compression) and print the bytes
    /// per flow record as JSON (`bytes_per_flow` self-contained,
    /// `link_bytes_per_flow` linked on one upload stream to an ingest that
    /// keeps a link table, as `run` sends by default); nothing is uploaded.
    Estimate(EstimateArgs),
    /// Inspect or repair the disk buffer (STATE_DIR/buffer) while the sensor is stopped.
    Buffer(BufferCmdArgs),
    /// Make this sensor's private key (mode 0600; it never leaves the box)
    /// and a certificate signing request to have signed ashore with
    /// `tidewatch-collector pki sign --csr FILE --id ID --vessel VESSEL`.
    Enroll(EnrollArgs),
}

/// Options of `enroll`.
#[derive(clap::Args)]
pub struct EnrollArgs {
    /// Where to write the private key (then `run --key`).
    #[arg(long, env = "TIDEWATCH_KEY", value_name = "PEM")]
    pub key: PathBuf,
    /// Where to write the certificate signing request (PEM), for the shore.
    #[arg(long, value_name = "PEM", default_value = "sensor.csr")]
    pub csr: PathBuf,
    /// Replace an existing key (its certificate stops matching: the sensor
    /// needs the new CSR signed before it can upload again).
    #[arg(long)]
    pub force: bool,
}

/// Options of `read`.
#[derive(clap::Args)]
pub struct ReadArgs {
    /// Capture file; the format is detected from its magic bytes.
    #[arg(required_unless_present = "interface", conflicts_with = "interface")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub live: LiveArgs,
    /// Stop live capture after this many seconds.
    #[arg(long, value_name = "SECS", requires = "interface")]
    pub duration: Option<f64>,
    /// Replay the file at this multiple of its recorded speed (1 = as
    /// captured); default: as fast as possible.
    #[arg(long, value_name = "FACTOR", conflicts_with = "interface")]
    pub replay_speed: Option<f64>,
    /// Print the asset inventory (one JSON object per asset) instead of flows.
    #[arg(long)]
    pub assets: bool,
    #[command(flatten)]
    pub meter: MeterArgs,
}

/// Options of `run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Capture file to replay (pcap or pcapng).
    #[arg(
        long,
        env = "TIDEWATCH_PCAP",
        value_name = "FILE",
        required_unless_present = "interface",
        conflicts_with = "interface"
    )]
    pub pcap: Option<PathBuf>,
    #[command(flatten)]
    pub live: LiveArgs,
    /// Replay the capture file at this multiple of its recorded speed
    /// (1 = as captured); default: as fast as possible.
    #[arg(
        long,
        env = "TIDEWATCH_REPLAY_SPEED",
        value_name = "FACTOR",
        conflicts_with = "interface"
    )]
    pub replay_speed: Option<f64>,
    /// Collector ingest endpoint.
    #[arg(
        long,
        env = "TIDEWATCH_COLLECTOR",
        value_name = "URL",
        default_value = "https://127.0.0.1:4443"
    )]
    pub collector: String,
    /// Name the collector certificate must carry (default: host of --collector).
    #[arg(long, env = "TIDEWATCH_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Fleet CA certificate (PEM) that signed the collector's certificate.
    #[arg(long, env = "TIDEWATCH_CA", value_name = "PEM")]
    pub ca: PathBuf,
    /// This sensor's certificate (PEM), signed ashore for its enrolled key
    /// (`tidewatch-collector pki sign`). A renewed certificate, kept in
    /// STATE_DIR/identity/renewed.pem, is used instead while it ends later.
    #[arg(long, env = "TIDEWATCH_CERT", value_name = "PEM")]
    pub cert: PathBuf,
    /// This sensor's private key (PEM), made by `tidewatch-sensor enroll`.
    #[arg(long, env = "TIDEWATCH_KEY", value_name = "PEM")]
    pub key: PathBuf,
    /// Ask the collector for a new certificate (for a fresh key) once this
    /// fraction of the current one's lifetime is left (at most 0.5).
    #[arg(long, env = "TIDEWATCH_RENEW_FRACTION", default_value_t = 1.0 / 3.0, value_name = "FRACTION")]
    pub renew_fraction: f64,
    /// Never renew the certificate over the link.
    #[arg(long, env = "TIDEWATCH_NO_RENEW")]
    pub no_renew: bool,
    /// Directory for persistent state (disk buffer, batch sequence counter, budget use).
    #[arg(
        long,
        env = "TIDEWATCH_STATE_DIR",
        default_value = "/var/lib/tidewatch-sensor"
    )]
    pub state_dir: PathBuf,
    /// Maximum flow records per batch.
    #[arg(long, env = "TIDEWATCH_BATCH_FLOWS", default_value_t = DEFAULT_BATCH_FLOWS)]
    pub batch_flows: usize,
    #[command(flatten)]
    pub seal: SealArgs,
    /// Batches in flight before waiting for acks.
    #[arg(long, env = "TIDEWATCH_WINDOW", default_value_t = 8)]
    pub window: usize,
    /// Seconds to wait for an ack before reconnecting and resending.
    #[arg(long, env = "TIDEWATCH_ACK_TIMEOUT", default_value_t = 30.0)]
    pub ack_timeout: f64,
    /// HTTP/2 keepalive: ping after this many idle seconds and give the
    /// connection up when no answer comes within as many seconds again
    /// (detects a link that silently drops everything).
    #[arg(
        long,
        env = "TIDEWATCH_KEEPALIVE_SECS",
        default_value_t = 10.0,
        value_name = "SECS"
    )]
    pub keepalive_secs: f64,
    /// Upload rate limit in bytes per second (0 = unlimited), so the
    /// sensor leaves room on a narrow link.
    #[arg(
        long,
        env = "TIDEWATCH_RATE_LIMIT",
        default_value_t = 0,
        value_name = "BYTES_PER_SEC"
    )]
    pub rate_limit: u64,
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
    pub daily_budget_bytes: u64,
    /// Percent of the daily budget kept for status, assets and OT-write
    /// flows: bulk flows stop when the rest is used.
    #[arg(
        long,
        env = "TIDEWATCH_BUDGET_RESERVE_PERCENT",
        default_value_t = 10,
        value_name = "PERCENT"
    )]
    pub budget_reserve_percent: u8,
    /// Length of a budget "day" in seconds (tests compress time).
    #[arg(long, hide = true, default_value_t = 86_400.0)]
    pub budget_period_secs: f64,
    /// Seal a batch from whatever records are pending after this many
    /// seconds, so that a quiet network's flows reach the disk buffer
    /// (and the shore) without waiting for a full batch.
    #[arg(
        long,
        env = "TIDEWATCH_FLUSH_INTERVAL",
        default_value_t = 10.0,
        value_name = "SECS"
    )]
    pub flush_interval: f64,
    /// While bulk batches sealed earlier still wait for the link or the
    /// daily budget (unacknowledged in the disk buffer), pending bulk flows
    /// are not sealed every --flush-interval but kept, to make larger
    /// batches that cost fewer bytes per flow, until a batch is full or its
    /// oldest flow has waited this many seconds. They would not reach the
    /// shore sooner anyway; until sealed they are in memory only, like the
    /// flows still open in the flow table. Status, assets and OT-write
    /// flows are never held.
    #[arg(
        long,
        env = "TIDEWATCH_MAX_BATCH_AGE",
        default_value_t = 120.0,
        value_name = "SECS"
    )]
    pub max_batch_age: f64,
    /// Send a SensorStatus record (capture and buffer counters, drops)
    /// every this many seconds, and once at the end.
    #[arg(
        long,
        env = "TIDEWATCH_STATUS_INTERVAL",
        default_value_t = 60.0,
        value_name = "SECS"
    )]
    pub status_interval: f64,
    /// Serve Prometheus metrics (/metrics) and liveness (/healthz) over
    /// plain HTTP on this address, e.g. 127.0.0.1:9464 (default: off).
    #[arg(long, env = "TIDEWATCH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub meter: MeterArgs,
    #[command(flatten)]
    pub buffer: BufferArgs,
    /// Fault injection for tests: after every batch is acked, send them all
    /// again with their original seq (the shore must drop the duplicates).
    #[arg(long, hide = true)]
    pub resend_acked: bool,
}

/// Options of `estimate`.
#[derive(clap::Args)]
pub struct EstimateArgs {
    /// Capture file (pcap or pcapng).
    pub file: PathBuf,
    /// Maximum flow records per batch, as for `run`.
    #[arg(long, default_value_t = DEFAULT_BATCH_FLOWS)]
    pub batch_flows: usize,
    #[command(flatten)]
    pub seal: SealArgs,
    /// Also print what each group of fields costs: the bytes saved when
    /// that group alone is left out of every batch (addresses, ports,
    /// times, counters, protocol and operations, indicators), and what is
    /// left with all of them out (framing: batch head, tables, lengths).
    #[arg(long)]
    pub by_field: bool,
    /// Also seal what is pending every this many seconds of capture time,
    /// as `run` does on a link that keeps up (`--flush-interval`); without
    /// it, batches are sealed full, as when the link or the budget is the
    /// limit (`--max-batch-age`).
    #[arg(long, value_name = "SECS")]
    pub flush_interval: Option<f64>,
    #[command(flatten)]
    pub meter: MeterArgs,
}

/// Options of `buffer`.
#[derive(clap::Args)]
pub struct BufferCmdArgs {
    /// The sensor's state directory.
    #[arg(
        long,
        global = true,
        env = "TIDEWATCH_STATE_DIR",
        default_value = "/var/lib/tidewatch-sensor"
    )]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub cmd: BufferCmd,
}

#[derive(clap::Args, Clone)]
pub struct MeterArgs {
    /// Seconds without a packet after which a flow is emitted.
    #[arg(
        long,
        env = "TIDEWATCH_IDLE_TIMEOUT",
        default_value_t = 120.0,
        value_name = "SECS"
    )]
    pub idle_timeout: f64,
    /// Seconds after which a long flow is emitted and restarted (delta records).
    #[arg(
        long,
        env = "TIDEWATCH_ACTIVE_TIMEOUT",
        default_value_t = 1800.0,
        value_name = "SECS"
    )]
    pub active_timeout: f64,
    /// Hard cap on concurrent flows; the least recently seen are evicted beyond it.
    #[arg(long, env = "TIDEWATCH_MAX_FLOWS", default_value_t = 262_144)]
    pub max_flows: usize,
    /// Hard cap on fragmented IP datagrams awaiting their later fragments;
    /// beyond it first fragments are counted, not remembered (their later
    /// fragments are metered without ports), so a fragment flood cannot
    /// grow memory.
    #[arg(long, env = "TIDEWATCH_MAX_FRAGMENTS", default_value_t = 65_536)]
    pub max_fragments: usize,
    /// IEEE OUI registry (CSV) for asset vendors; Debian's ieee-data package
    /// installs it at the default path. Missing file: vendors stay empty.
    #[arg(
        long,
        env = "TIDEWATCH_OUI_FILE",
        default_value = "/usr/share/ieee-data/oui.csv",
        value_name = "CSV"
    )]
    pub oui_file: PathBuf,
}

impl MeterArgs {
    pub fn flow_config(&self) -> anyhow::Result<FlowConfig> {
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
            max_fragments: self.max_fragments,
            ..FlowConfig::default()
        })
    }

    /// A flow table, with the asset inventory when `assets` is set.
    pub fn table(&self, assets: bool) -> anyhow::Result<FlowTable> {
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
pub struct LiveArgs {
    /// Capture live on this network interface (needs CAP_NET_RAW) instead of
    /// reading a file; stops on SIGTERM/SIGINT and flushes every flow.
    #[arg(long, env = "TIDEWATCH_INTERFACE", value_name = "IFACE")]
    pub interface: Option<String>,
    /// BPF capture filter in tcpdump syntax (live capture only).
    #[arg(
        long,
        env = "TIDEWATCH_FILTER",
        value_name = "BPF",
        requires = "interface"
    )]
    pub filter: Option<String>,
    /// Kernel capture buffer in MiB (live capture only): what absorbs a
    /// burst while the sensor is busy; a full buffer drops packets
    /// (counted as kernel drops).
    #[arg(
        long,
        env = "TIDEWATCH_CAPTURE_BUFFER_MIB",
        value_name = "MIB",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    pub capture_buffer_mib: u32,
}

#[derive(Subcommand)]
pub enum BufferCmd {
    /// Verify every segment (length and CRC of each record); exit 1 on damage.
    Check,
    /// Rewrite damaged segments keeping only their valid records.
    Repair,
    /// Show size, backlog and acked position.
    Stats,
    /// Batches the collector refused for good, set aside on disk so they
    /// never block the queue: list, show, put back into the queue, delete.
    #[command(subcommand)]
    SetAside(SetAsideCmd),
}

#[derive(Subcommand)]
pub enum SetAsideCmd {
    /// One line per batch set aside: class, seq, flows, bytes, reason.
    List,
    /// The records of one set-aside batch as JSON lines (flows as `read` prints them).
    Show {
        /// Seq of the batch (from `list`).
        seq: u64,
    },
    /// Put every set-aside batch back into the upload queue, its records
    /// sealed again under --batch-max-bytes with new seqs (after the cause
    /// is fixed, e.g. the collector's limit raised). Run it with the sensor
    /// stopped, with the sensor's options (its environment file).
    Retry(RetryArgs),
    /// Delete one set-aside batch for good (its flows are lost).
    Delete {
        /// Seq of the batch (from `list`).
        seq: u64,
    },
}

/// Options of `buffer set-aside retry`: how to seal again, and the buffer.
#[derive(clap::Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub seal: SealArgs,
    #[command(flatten)]
    pub buffer: BufferArgs,
}

/// Disk buffer settings of `run`.
#[derive(clap::Args, Clone)]
pub struct BufferArgs {
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
pub enum FsyncArg {
    EveryBatch,
    Interval,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum WhenFullArg {
    /// Drop the oldest segment of the lowest class (bulk flows first).
    DropOldest,
    /// Refuse new batches of flows (a new status or asset batch replaces older ones).
    DropNewest,
}

/// How batches are sealed (`run`, `estimate`, `buffer set-aside retry`).
#[derive(clap::Args, Clone)]
pub struct SealArgs {
    /// Maximum bytes of a batch payload (encoded, compressed): records are
    /// grouped by size too, and a larger batch is split. Keep it well under
    /// the collector's --max-batch-bytes (1,000,000 by default).
    #[arg(long, env = "TIDEWATCH_BATCH_MAX_BYTES", default_value_t = DEFAULT_BATCH_MAX_BYTES, value_name = "BYTES")]
    pub batch_max_bytes: usize,
    /// Seal batches uncompressed (default: zstd).
    #[arg(long, env = "TIDEWATCH_NO_COMPRESS")]
    pub no_compress: bool,
    /// How records are laid out in a batch: `columns` (fewer bytes on the
    /// link; needs a collector that reads the columnar format, as this
    /// release's does) or `protobuf` (the original layout, which every
    /// collector reads). Either way the shore stores the same rows.
    #[arg(long, env = "TIDEWATCH_BATCH_LAYOUT", value_enum, default_value_t = LayoutArg::Columns, value_name = "LAYOUT")]
    pub batch_layout: LayoutArg,
}

/// `--batch-layout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    Columns,
    Protobuf,
}

/// Smallest `--batch-max-bytes`: a single record must always fit.
const MIN_BATCH_MAX_BYTES: usize = 16 * 1024;

impl SealArgs {
    /// The batch configuration for at most `max_flows` flows per batch.
    pub fn config(&self, max_flows: usize) -> anyhow::Result<BatchConfig> {
        let v = self.batch_max_bytes;
        if v < MIN_BATCH_MAX_BYTES {
            bail!("--batch-max-bytes must be at least {MIN_BATCH_MAX_BYTES} (a single record must fit), got {v}");
        }
        Ok(BatchConfig {
            max_flows,
            max_bytes: v,
            compress: !self.no_compress,
            layout: match self.batch_layout {
                LayoutArg::Columns => Layout::Columns,
                LayoutArg::Protobuf => Layout::Protobuf,
            },
            ..BatchConfig::default()
        })
    }
}

impl BufferArgs {
    pub fn config(&self, state_dir: &std::path::Path) -> anyhow::Result<BufferConfig> {
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
