//! `tidewatch-collector migrate`: creates or upgrades the ClickHouse schema
//! for the server version it finds (the migrations themselves, and their
//! ledger, are in [`crate::schema`], their only owner), and optionally loads
//! the fleet registry after.

use std::path::PathBuf;

use anyhow::Context;
use tracing::info;

use crate::clickhouse_args::{ClickHouseArgs, ClusterArgs};
use crate::registry;
use crate::schema::{self, Caps, RenderOptions, Renderer, ServerVersion, MIGRATIONS};

/// Options of `migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Raw flow retention in days (TTL on servers that support it).
    #[arg(long, default_value_t = 90)]
    pub flow_retention_days: u32,
    /// Hourly rollup retention in days (kept longer than raw flows).
    #[arg(long, default_value_t = 400)]
    pub rollup_retention_days: u32,
    /// Print the SQL for --server-version instead of connecting.
    #[arg(long, requires = "server_version")]
    pub print: bool,
    /// Server version to render for with --print (e.g. 18.16 or 24.8).
    #[arg(long)]
    pub server_version: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// After migrating, load this fleet registry file (as `registry load`).
    #[arg(long, env = "TIDEWATCH_FLEET_REGISTRY", value_name = "JSON")]
    pub fleet_registry: Option<PathBuf>,
}

/// Migrates (or, with `--print`, prints the SQL for `--server-version`).
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let MigrateArgs {
        clickhouse,
        flow_retention_days,
        rollup_retention_days,
        print,
        server_version,
        cluster,
        fleet_registry,
    } = args;
    clickhouse.validate()?;
    if flow_retention_days == 0 || rollup_retention_days < flow_retention_days {
        anyhow::bail!(
            "retention: --flow-retention-days must be at least 1 and --rollup-retention-days at least as long"
        );
    }
    cluster.validate()?;
    let opts = RenderOptions {
        database: clickhouse.clickhouse_database.clone(),
        flow_retention_days,
        rollup_retention_days,
        cluster: cluster.cluster,
    };
    if print {
        let v = ServerVersion::parse(server_version.as_deref().unwrap_or_default())?;
        let caps = Caps::for_version(v);
        let mut renderer = Renderer::new(caps, &opts);
        for s in renderer.bootstrap()? {
            println!("{s};\n");
        }
        for m in MIGRATIONS {
            println!(
                "-- migration {} ({}) for ClickHouse {v} [{}{}]",
                m.version,
                m.name,
                caps.variant(),
                opts.cluster
                    .as_deref()
                    .map(|c| format!(", cluster {c}"))
                    .unwrap_or_default()
            );
            for s in renderer.migration(m)? {
                println!("{s};\n");
            }
        }
        return Ok(());
    }
    let r = schema::migrate(&clickhouse, &opts, &cluster.cluster_nodes)
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
