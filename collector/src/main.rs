//! `tidewatch-collector`: the shore side of tidewatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tidewatch_collector::clickhouse_args::ClickHouseArgs;
use tidewatch_collector::{
    alerts, deadletter, deliver, detect, envelope, ingest, intel, maintenance, migrate, pki, query,
    registry, report, signer, sink,
};

#[derive(Parser)]
#[command(
    name = "tidewatch-collector",
    version,
    about = "Shore side of tidewatch: sensor ingest (mTLS gRPC -> Kafka), Kafka -> ClickHouse sink, schema, PKI, queries",
    long_about = "Shore side of tidewatch.\n\n\
  ingest   accepts sensor uploads over mutually authenticated gRPC and acks a batch once it is in Kafka\n\
  sink     consumes Kafka and inserts into ClickHouse, committing offsets only after the insert\n\
  migrate  creates or upgrades the ClickHouse schema for the detected server version\n\
  pki      creates the fleet CA, signs sensors' requests, issues server and ingest certificates, revokes\n\
  signer   holds the CA key and renews sensor certificates for ingest (only ingest reaches it)\n\
  envelope-key makes the key pair ingest signs Kafka records with (the sink verifies)\n\
  registry loads and shows the fleet registry (sensor -> vessel, IMO, site, role)\n\
  maintenance drops partitions past the retention (servers without TTL)\n\
  query    runs analyst queries against ClickHouse\n\
  intel    loads threat-intel feeds (STIX 2.1, MISP, lists) and hunts for them over stored flows\n\
  detect   raises alerts as batches arrive (its own consumer group), stored once each\n\
  alerts   lists alerts and records their handling (ack, close, suppress, reopen)\n\
  deliver  sends alerts to a syslog receiver (RFC 5424 over TCP or TLS; JSON or CEF) or a webhook\n\n\
Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more detail."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Accept sensor uploads (mTLS gRPC) and write them to Kafka.
    Ingest(ingest::IngestArgs),
    /// Move batches from Kafka into ClickHouse.
    Sink(sink::SinkArgs),
    /// Create or upgrade the ClickHouse schema (idempotent).
    Migrate(migrate::MigrateArgs),
    /// Fleet PKI: CA, server and sensor certificates, revocation.
    Pki {
        /// Directory holding the CA and issued certificates.
        #[arg(long, env = "TIDEWATCH_PKI_DIR", default_value = "pki")]
        dir: PathBuf,
        #[command(subcommand)]
        cmd: pki::PkiCmd,
    },
    /// Renew sensor certificates for ingest: the only process holding the CA key.
    Signer(signer::SignerArgs),
    /// Make the Ed25519 key pair ingest signs Kafka envelopes with
    /// (envelope-signing-key.pem, 0600) and the sinks verify them with
    /// (envelope-verify-key.pem).
    EnvelopeKey {
        /// Directory to write the two files to (neither may exist).
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Retention by partition dropping (for servers without TTL).
    Maintenance {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        #[command(subcommand)]
        cmd: maintenance::MaintenanceCmd,
    },
    /// The fleet registry: sensor -> vessel, IMO number, site, role.
    Registry {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        #[command(subcommand)]
        cmd: registry::RegistryCmd,
    },
    /// Streaming detection: alerts as batches arrive.
    Detect(detect::DetectArgs),
    /// Send alerts to a syslog receiver or a webhook (one process per destination).
    Deliver(deliver::DeliverArgs),
    /// Alerts and their handling.
    Alerts {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        #[command(subcommand)]
        cmd: alerts::AlertsCmd,
    },
    /// Threat intelligence: load feeds, hunt for their indicators in stored flows.
    Intel {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        #[command(subcommand)]
        cmd: intel::IntelCmd,
    },
    /// The dead-letter topic: list, show, replay (after the cause is fixed).
    Deadletter(deadletter::DeadLetterArgs),
    /// Analyst queries.
    Query {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        #[command(subcommand)]
        cmd: query::QueryCmd,
    },
    /// Reports for surveyors: `e26`, a vessel's IACS UR E26 evidence as
    /// HTML and JSON.
    Report {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        #[command(subcommand)]
        cmd: report::ReportCmd,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidewatch-collector: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidewatch-collector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Ingest(a) => ingest::run(a).await,
        Cmd::Sink(a) => sink::run(a).await,
        Cmd::Migrate(a) => migrate::run(a).await,
        Cmd::Pki { dir, cmd } => pki::run(&dir, cmd),
        Cmd::Signer(a) => signer::run(a).await,
        Cmd::EnvelopeKey { out_dir } => {
            let (sk, vk) = envelope::generate(&out_dir)?;
            println!("ingest:  --envelope-signing-key {}  (keep secret)\nsinks:   --envelope-verify-key {}", sk.display(), vk.display());
            Ok(())
        }
        Cmd::Maintenance { clickhouse, cmd } => {
            clickhouse.validate()?;
            maintenance::run(&clickhouse, cmd).await
        }
        Cmd::Registry { clickhouse, cmd } => {
            clickhouse.validate()?;
            registry::run(&clickhouse.client(), cmd).await
        }
        Cmd::Query { clickhouse, cmd } => query::run(clickhouse, cmd).await,
        Cmd::Report { clickhouse, cmd } => report::run(clickhouse, cmd).await,
        Cmd::Detect(a) => detect::run(a).await,
        Cmd::Deliver(a) => deliver::run(a).await,
        Cmd::Alerts { clickhouse, cmd } => {
            clickhouse.validate()?;
            alerts::run(&clickhouse.client(), cmd).await
        }
        Cmd::Intel { clickhouse, cmd } => {
            clickhouse.validate()?;
            intel::run(&clickhouse.client(), cmd).await
        }
        Cmd::Deadletter(a) => deadletter::run(a).await,
    }
}
