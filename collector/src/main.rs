//! `tidewatch-collector`: the shore side of tidewatch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidewatch_collector::clickhouse_args::ClickHouseArgs;
use tidewatch_collector::pki::{parse_date, Pki, Validity};
use tidewatch_collector::schema::{self, Caps, RenderOptions, ServerVersion, MIGRATIONS};
use tidewatch_collector::{ingest, maintenance, query, registry, sink};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "tidewatch-collector",
    version,
    about = "Shore side of tidewatch: sensor ingest (mTLS gRPC -> Kafka), Kafka -> ClickHouse sink, schema, PKI, queries",
    long_about = "Shore side of tidewatch.\n\n\
  ingest   accepts sensor uploads over mutually authenticated gRPC and acks a batch once it is in Kafka\n\
  sink     consumes Kafka and inserts into ClickHouse, committing offsets only after the insert\n\
  migrate  creates or upgrades the ClickHouse schema for the detected server version\n\
  pki      creates the fleet CA and issues server and sensor certificates\n\
  registry loads and shows the fleet registry (sensor -> vessel, IMO, site, role)\n\
  maintenance drops partitions past the retention (servers without TTL)\n\
  query    runs analyst queries against ClickHouse\n\n\
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
    Migrate {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        /// Raw flow retention in days (TTL on servers that support it).
        #[arg(long, default_value_t = 90)]
        flow_retention_days: u32,
        /// Hourly rollup retention in days (kept longer than raw flows).
        #[arg(long, default_value_t = 400)]
        rollup_retention_days: u32,
        /// Print the SQL for --server-version instead of connecting.
        #[arg(long, requires = "server_version")]
        print: bool,
        /// Server version to render for with --print (e.g. 18.16 or 24.8).
        #[arg(long)]
        server_version: Option<String>,
        /// After migrating, load this fleet registry file (as `registry load`).
        #[arg(long, env = "TIDEWATCH_FLEET_REGISTRY", value_name = "JSON")]
        fleet_registry: Option<PathBuf>,
    },
    /// Fleet PKI: CA, server and sensor certificates, revocation.
    Pki {
        /// Directory holding the CA and issued certificates.
        #[arg(long, env = "TIDEWATCH_PKI_DIR", default_value = "pki")]
        dir: PathBuf,
        #[command(subcommand)]
        cmd: PkiCmd,
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
    /// Analyst queries.
    Query {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        #[command(subcommand)]
        cmd: query::QueryCmd,
    },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create the fleet CA (ca.pem, ca-key.pem) and an empty CRL.
    InitCa {
        /// CA common name.
        #[arg(long, default_value = "tidewatch fleet CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue the collector's server certificate (server.pem, server-key.pem).
    IssueServer {
        /// DNS name the sensors connect to (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// IP address the sensors connect to (repeatable).
        #[arg(long = "ip")]
        ip: Vec<std::net::IpAddr>,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Issue a sensor certificate carrying its identity.
    IssueSensor {
        /// Sensor id (1-64 of A-Z a-z 0-9 . _ -), unique in the fleet.
        #[arg(long)]
        id: String,
        /// Vessel, crane or site the sensor belongs to.
        #[arg(long)]
        vessel: String,
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// End of validity (YYYY-MM-DD) instead of --days; may be in the past.
        #[arg(long)]
        not_after: Option<String>,
        /// Where to write ID.pem and ID-key.pem (default: DIR/sensors).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke every certificate of a sensor and rewrite crl.pem.
    Revoke {
        #[arg(long)]
        id: String,
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
        Cmd::Migrate {
            clickhouse,
            flow_retention_days,
            rollup_retention_days,
            print,
            server_version,
            fleet_registry,
        } => {
            clickhouse.validate()?;
            if flow_retention_days == 0 || rollup_retention_days < flow_retention_days {
                anyhow::bail!(
                    "retention: --flow-retention-days must be at least 1 and --rollup-retention-days at least as long"
                );
            }
            let opts = RenderOptions {
                database: clickhouse.clickhouse_database.clone(),
                flow_retention_days,
                rollup_retention_days,
            };
            if print {
                let v = ServerVersion::parse(server_version.as_deref().unwrap_or_default())?;
                let caps = Caps::for_version(v);
                for s in schema::bootstrap_statements(&opts.database) {
                    println!("{s};\n");
                }
                for m in MIGRATIONS {
                    println!(
                        "-- migration {} ({}) for ClickHouse {v} [{}]",
                        m.version,
                        m.name,
                        caps.variant()
                    );
                    for s in schema::render(m, caps, &opts)? {
                        println!("{s};\n");
                    }
                }
                return Ok(());
            }
            let r = schema::migrate(&clickhouse.server_client(), &opts)
                .await
                .with_context(|| format!("migrating {}", clickhouse.clickhouse_url))?;
            info!(server = %r.caps.version, variant = r.caps.variant(), applied = ?r.applied, already = ?r.already, "schema up to date");
            println!(
                "schema up to date on ClickHouse {} ({} variant): applied {:?}, already present {:?}",
                r.caps.version,
                r.caps.variant(),
                r.applied,
                r.already
            );
            if let Some(f) = fleet_registry {
                let rep = registry::load_file(&clickhouse.client(), &f).await?;
                println!(
                    "fleet registry loaded from {}: {} active sensors",
                    f.display(),
                    rep.active
                );
            }
            Ok(())
        }
        Cmd::Pki { dir, cmd } => pki(dir, cmd),
        Cmd::Maintenance { clickhouse, cmd } => {
            clickhouse.validate()?;
            maintenance::run(
                &clickhouse.server_client(),
                &clickhouse.clickhouse_database,
                cmd,
            )
            .await
        }
        Cmd::Registry { clickhouse, cmd } => {
            clickhouse.validate()?;
            registry::run(&clickhouse.client(), cmd).await
        }
        Cmd::Query { clickhouse, cmd } => query::run(clickhouse, cmd).await,
    }
}

fn pki(dir: PathBuf, cmd: PkiCmd) -> anyhow::Result<()> {
    let p = Pki::new(&dir);
    match cmd {
        PkiCmd::InitCa { name, days } => {
            let (c, k) = p.init_ca(&name, days)?;
            println!("created fleet CA\n  certificate: {}  (copy to every sensor and to ingest --client-ca)\n  private key: {}  (keep offline; needed to issue and revoke)\n  CRL:         {}  (ingest --crl)", c.display(), k.display(), p.crl_path().display());
        }
        PkiCmd::IssueServer { dns, ip, days } => {
            let mut names = dns;
            names.extend(ip.iter().map(|i| i.to_string()));
            let (c, k) = p.issue_server(&names, Validity::new(days, None))?;
            println!("issued server certificate for {}\n  ingest --tls-cert {} --tls-key {} --client-ca {}", names.join(", "), c.display(), k.display(), p.ca_cert_path().display());
        }
        PkiCmd::IssueSensor {
            id,
            vessel,
            days,
            not_after,
            out,
        } => {
            let end = not_after.as_deref().map(parse_date).transpose()?;
            let (c, k) = p.issue_sensor(&id, &vessel, Validity::new(days, end), out.as_deref())?;
            println!("issued sensor certificate {id} (vessel {vessel})\n  copy to the sensor: {} {} {}\n  tidewatch-sensor run --ca ca.pem --cert {id}.pem --key {id}-key.pem ...", p.ca_cert_path().display(), c.display(), k.display());
        }
        PkiCmd::Revoke { id } => {
            let n = p.revoke_sensor(&id)?;
            println!("revoked {n} certificate(s) of sensor {id}; CRL rewritten: {}\n  restart ingest (or roll the pods) so it loads the new CRL", p.crl_path().display());
        }
    }
    Ok(())
}
