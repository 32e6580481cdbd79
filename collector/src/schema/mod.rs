//! Schema ownership: versioned migrations (SQL files under
//! `deploy/clickhouse/migrations/`, compiled into the binary), rendered for the
//! server version that `migrate` detects, applied in order, and recorded in
//! `<db>.schema_migrations`. Running `migrate` again is a no-op.
//!
//! Modern features are used only where the server has them: LowCardinality,
//! column codecs, TTL and the IPv6 type need ClickHouse 21.8 or later (the
//! oldest LTS that has them all, which production runs); older servers such
//! as Debian's 18.16 get plain types, no codecs and no TTL (retention there is
//! done by dropping partitions).
//!
//! On a cluster (`migrate --cluster NAME`) the same migrations are rewritten
//! statement by statement for shards × replicas: [`cluster`] says how, and
//! why every copy of a batch lands on one shard.

pub mod cluster;

use std::fmt;

use clickhouse::Client;
use tracing::{info, warn};

use crate::clickhouse_args::ClickHouseArgs;

/// A rendered statement and where `migrate` runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// On the server `migrate` connects to (the `ON CLUSTER` statements of
    /// a cluster too: ClickHouse runs them on every node).
    Server(String),
    /// Without `ON CLUSTER`, on one node of each shard of the cluster
    /// ([`cluster::ShardNodes`]): an `ALTER` of a replicated table.
    EachShard(String),
}

impl Statement {
    pub fn sql(&self) -> &str {
        match self {
            Statement::Server(s) | Statement::EachShard(s) => s,
        }
    }
}

impl fmt::Display for Statement {
    /// As `migrate --print` shows it: SQL, after a comment for a statement
    /// that runs on each shard.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::Server(s) => write!(f, "{s}"),
            Statement::EachShard(s) => write!(f, "-- on one node of each shard:\n{s}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("cannot parse ClickHouse version {0:?}")]
    Version(String),
    #[error("migration {version} ({name}) failed in statement {index}: {source}\n{statement}")]
    Statement {
        version: u32,
        name: &'static str,
        index: usize,
        statement: String,
        source: Box<SchemaError>,
    },
    #[error("migration {0}: unbalanced -- @modern/-- @legacy/-- @end markers")]
    Markers(u32),
    #[error("migration {0}: unknown placeholder {1}")]
    Placeholder(u32, String),
    #[error("migration {0}: cannot render for a cluster: {1}")]
    Cluster(u32, String),
    #[error("{0}")]
    Topology(String),
}

/// A server version such as 18.16.1 or 24.8.4.13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    pub fn parse(s: &str) -> Result<Self, SchemaError> {
        let mut it = s.trim().split('.');
        let major = it.next().and_then(|x| x.parse().ok());
        let minor = it.next().and_then(|x| x.parse().ok());
        match (major, minor) {
            (Some(major), Some(minor)) => Ok(ServerVersion { major, minor }),
            _ => Err(SchemaError::Version(s.to_string())),
        }
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the server supports, derived from its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub version: ServerVersion,
    pub modern: bool,
}

impl Caps {
    pub fn for_version(version: ServerVersion) -> Self {
        let modern = version
            >= ServerVersion {
                major: 21,
                minor: 8,
            };
        Caps { version, modern }
    }

    pub fn variant(&self) -> &'static str {
        if self.modern {
            "modern"
        } else {
            "legacy"
        }
    }
}

/// Options that shape the rendered schema.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub database: String,
    /// Raw flow retention in days (TTL on modern servers).
    pub flow_retention_days: u32,
    /// Retention of the hourly rollups (TTL on modern servers).
    pub rollup_retention_days: u32,
    /// The cluster (in the servers' `remote_servers`) to render for, or
    /// `None` for a single server.
    pub cluster: Option<String>,
}

impl RenderOptions {
    /// What the migrations ledger records besides the server variant.
    fn topology(&self) -> String {
        match &self.cluster {
            Some(c) => format!("cluster {c}"),
            None => "single node".to_string(),
        }
    }
}

/// Renders the bootstrap statements and then the migrations, in order, for
/// one server version and topology (on a cluster, a migration's rendering
/// depends on the tables the earlier ones left, so every migration is
/// rendered, applied or not).
pub struct Renderer<'a> {
    caps: Caps,
    opts: &'a RenderOptions,
    cluster: Option<cluster::Distribute>,
}

impl<'a> Renderer<'a> {
    pub fn new(caps: Caps, opts: &'a RenderOptions) -> Self {
        Renderer {
            caps,
            opts,
            cluster: opts.cluster.as_deref().map(cluster::Distribute::new),
        }
    }

    /// The database and the migrations ledger.
    pub fn bootstrap(&mut self) -> Result<Vec<Statement>, SchemaError> {
        self.distribute(0, bootstrap_statements(&self.opts.database))
    }

    /// The statements of `m`; call for every migration in order.
    pub fn migration(&mut self, m: &Migration) -> Result<Vec<Statement>, SchemaError> {
        let single = render(m, self.caps, self.opts)?;
        self.distribute(m.version, single)
    }

    fn distribute(
        &mut self,
        version: u32,
        single: Vec<String>,
    ) -> Result<Vec<Statement>, SchemaError> {
        let Some(d) = self.cluster.as_mut() else {
            return Ok(single.into_iter().map(Statement::Server).collect());
        };
        let mut out = Vec::with_capacity(single.len() * 2);
        for s in &single {
            out.extend(d.statement(version, s)?);
        }
        Ok(out)
    }
}

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Never edit one that has shipped: add a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../../deploy/clickhouse/migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "fleet_registry",
        sql: include_str!("../../../deploy/clickhouse/migrations/0002_fleet_registry.sql"),
    },
    Migration {
        version: 3,
        name: "rollups",
        sql: include_str!("../../../deploy/clickhouse/migrations/0003_rollups.sql"),
    },
    Migration {
        version: 4,
        name: "retention",
        sql: include_str!("../../../deploy/clickhouse/migrations/0004_retention.sql"),
    },
    Migration {
        version: 5,
        name: "set_aside",
        sql: include_str!("../../../deploy/clickhouse/migrations/0005_set_aside.sql"),
    },
    Migration {
        version: 6,
        name: "intel",
        sql: include_str!("../../../deploy/clickhouse/migrations/0006_intel.sql"),
    },
    Migration {
        version: 7,
        name: "alerts",
        sql: include_str!("../../../deploy/clickhouse/migrations/0007_alerts.sql"),
    },
    Migration {
        version: 8,
        name: "alert_deliveries",
        sql: include_str!("../../../deploy/clickhouse/migrations/0008_alert_deliveries.sql"),
    },
    Migration {
        version: 9,
        name: "conduits_hunts",
        sql: include_str!("../../../deploy/clickhouse/migrations/0009_conduits_hunts.sql"),
    },
    Migration {
        version: 10,
        name: "rollups_by_the_sink",
        sql: include_str!("../../../deploy/clickhouse/migrations/0010_rollups_by_the_sink.sql"),
    },
    Migration {
        version: 11,
        name: "device_identity",
        sql: include_str!("../../../deploy/clickhouse/migrations/0011_device_identity.sql"),
    },
];

/// Renders a migration into its single-node statements for the given
/// capabilities.
fn render(m: &Migration, caps: Caps, opts: &RenderOptions) -> Result<Vec<String>, SchemaError> {
    let mut kept = String::new();
    let mut block: Option<bool> = None; // Some(keep?) inside a marker block
    for line in m.sql.lines() {
        let t = line.trim();
        match t {
            "-- @modern" | "-- @legacy" => {
                if block.is_some() {
                    return Err(SchemaError::Markers(m.version));
                }
                block = Some((t == "-- @modern") == caps.modern);
                continue;
            }
            "-- @end" => {
                if block.take().is_none() {
                    return Err(SchemaError::Markers(m.version));
                }
                continue;
            }
            _ => {}
        }
        if block == Some(false) || t.starts_with("--") {
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    if block.is_some() {
        return Err(SchemaError::Markers(m.version));
    }
    let subst = |name: &str| -> Option<String> {
        Some(match (name, caps.modern) {
            ("db", _) => opts.database.clone(),
            ("string_lc", true) => "LowCardinality(String)".into(),
            ("string_lc", false) => "String".into(),
            ("codec_delta", true) => "CODEC(Delta, ZSTD(1))".into(),
            ("codec_zstd", true) => "CODEC(ZSTD(1))".into(),
            ("codec_delta" | "codec_zstd", false) => String::new(),
            ("flows_ttl", true) => format!(
                "TTL toDateTime(intDiv(first_seen_us, 1000000)) + INTERVAL {} DAY",
                opts.flow_retention_days
            ),
            ("flows_ttl", false) => String::new(),
            ("rollup_ttl", true) => {
                format!("TTL hour + INTERVAL {} DAY", opts.rollup_retention_days)
            }
            ("rollup_ttl", false) => String::new(),
            ("rollup_days", _) => opts.rollup_retention_days.to_string(),
            _ => return None,
        })
    };
    let mut out = String::with_capacity(kept.len());
    let mut rest = kept.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| SchemaError::Placeholder(m.version, "unterminated {{".into()))?;
        let name = after[..end].trim();
        out.push_str(
            &subst(name).ok_or_else(|| SchemaError::Placeholder(m.version, name.to_string()))?,
        );
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out
        .split(";\n")
        .map(str::trim)
        .map(|s| s.trim_end_matches(';').trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// The database and the migration bookkeeping table, created before any
/// migration runs.
fn bootstrap_statements(db: &str) -> Vec<String> {
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, \
             variant String, server_version String, checksum String, applied_at DateTime) \
             ENGINE = MergeTree ORDER BY version"
        ),
    ]
}

/// FNV-1a of a migration's source, recorded to notice edited migrations.
fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The server's version.
pub async fn server_version(client: &Client) -> Result<ServerVersion, SchemaError> {
    let v: String = client.query("SELECT version()").fetch_one().await?;
    ServerVersion::parse(&v)
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Applied {
    version: u32,
    checksum: String,
}

#[derive(Debug, clickhouse::Row, serde::Serialize)]
struct AppliedRow {
    version: u32,
    name: String,
    variant: String,
    server_version: String,
    checksum: String,
    applied_at: u32,
}

/// What a migrate run did.
#[derive(Debug)]
pub struct MigrateReport {
    pub caps: Caps,
    pub applied: Vec<u32>,
    pub already: Vec<u32>,
}

/// Whether `db` was migrated for a single server or a cluster (by its
/// ledger's engine), refusing to migrate it as the other.
async fn check_topology(server: &Client, opts: &RenderOptions) -> Result<(), SchemaError> {
    let db = &opts.database;
    let engines: Vec<String> = server
        .query("SELECT engine FROM system.tables WHERE database = ? AND name = 'schema_migrations'")
        .bind(db)
        .fetch_all()
        .await?;
    let distributed = engines.first().map(|e| e == "Distributed");
    match (&opts.cluster, distributed) {
        (Some(_), Some(false)) => Err(SchemaError::Topology(format!(
            "database {db} was migrated for a single server; it cannot become a cluster's (migrate without --cluster)"
        ))),
        (None, Some(true)) => Err(SchemaError::Topology(format!(
            "database {db} was migrated for a cluster; migrate it with --cluster"
        ))),
        (Some(c), _) => cluster::ensure_known(server, c).await,
        (None, _) => Ok(()),
    }
}

/// Runs rendered statements: on the server, or on one node of each shard.
struct Runner {
    server: Client,
    /// Found before any statement runs, for a cluster.
    shards: Option<cluster::ShardNodes>,
}

impl Runner {
    async fn run(&self, stmt: &Statement) -> Result<(), SchemaError> {
        match (stmt, &self.shards) {
            (Statement::Server(sql), _) => Ok(self.server.query(sql).execute().await?),
            (Statement::EachShard(sql), Some(shards)) => shards.execute(sql).await,
            (Statement::EachShard(_), None) => Err(SchemaError::Topology(
                "a statement for each shard outside a cluster".into(),
            )),
        }
    }
}

/// Applies every pending migration, on the server of `ch` (and, for a
/// cluster, the ALTERs on one node of each shard: `cluster_nodes`, or the
/// cluster's hosts, see [`cluster::ShardNodes::find`]).
pub async fn migrate(
    ch: &ClickHouseArgs,
    opts: &RenderOptions,
    cluster_nodes: &[String],
) -> Result<MigrateReport, SchemaError> {
    let server = &ch.server_client();
    let version = server_version(server).await?;
    let caps = Caps::for_version(version);
    let db = &opts.database;
    let topology = opts.topology();
    info!(server = %version, variant = caps.variant(), %topology, database = %db, "migrating schema");
    check_topology(server, opts).await?;
    let mut renderer = Renderer::new(caps, opts);
    let shards = match &opts.cluster {
        Some(c) => Some(cluster::ShardNodes::find(server, ch, c, cluster_nodes).await?),
        None => None,
    };
    let runner = Runner {
        server: server.clone(),
        shards,
    };
    for stmt in renderer.bootstrap()? {
        runner.run(&stmt).await?;
    }
    let done: Vec<Applied> = server
        .query(&format!(
            "SELECT version, checksum FROM {db}.schema_migrations ORDER BY version"
        ))
        .fetch_all()
        .await?;
    let mut report = MigrateReport {
        caps,
        applied: Vec::new(),
        already: Vec::new(),
    };
    for m in MIGRATIONS {
        let statements = renderer.migration(m)?;
        if let Some(a) = done.iter().find(|a| a.version == m.version) {
            if a.checksum != checksum(m.sql) {
                warn!(
                    version = m.version,
                    name = m.name,
                    "migration source changed after it was applied; not re-applying"
                );
            }
            report.already.push(m.version);
            continue;
        }
        for (i, s) in statements.iter().enumerate() {
            runner
                .run(s)
                .await
                .map_err(|source| SchemaError::Statement {
                    version: m.version,
                    name: m.name,
                    index: i + 1,
                    statement: s.sql().to_string(),
                    source: Box::new(source),
                })?;
        }
        let mut ins = server
            .clone()
            .with_database(db)
            .insert::<AppliedRow>("schema_migrations")
            .await?;
        ins.write(&AppliedRow {
            version: m.version,
            name: m.name.to_string(),
            variant: format!("{}, {topology}", caps.variant()),
            server_version: version.to_string(),
            checksum: checksum(m.sql),
            applied_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(0),
        })
        .await?;
        ins.end().await?;
        info!(
            version = m.version,
            name = m.name,
            statements = statements.len(),
            "migration applied"
        );
        report.applied.push(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> RenderOptions {
        RenderOptions {
            database: "tw".into(),
            flow_retention_days: 30,
            rollup_retention_days: 400,
            cluster: None,
        }
    }

    #[test]
    fn every_migration_renders_for_a_cluster_of_either_variant() {
        let opts = RenderOptions {
            cluster: Some("fleet".into()),
            ..opts()
        };
        for v in [(18, 16), (24, 8)] {
            let caps = Caps::for_version(ServerVersion {
                major: v.0,
                minor: v.1,
            });
            let mut r = Renderer::new(caps, &opts);
            let mut all = r.bootstrap().unwrap();
            for m in MIGRATIONS {
                all.extend(r.migration(m).unwrap());
            }
            for s in &all {
                match s {
                    // ALTERs of the replicated tables go to each shard
                    // without ON CLUSTER (see `cluster`), inserts through
                    // the Distributed tables, everything else ON CLUSTER.
                    Statement::EachShard(sql) => {
                        assert!(sql.starts_with("ALTER TABLE ") && !sql.contains(" ON CLUSTER"))
                    }
                    Statement::Server(sql) if sql.starts_with("INSERT INTO ") => {}
                    Statement::Server(sql) => assert!(sql.contains(" ON CLUSTER fleet"), "{sql}"),
                }
            }
            assert!(all.iter().any(|s| matches!(s, Statement::EachShard(_))));
            let text = all.iter().map(|s| s.sql()).collect::<Vec<_>>().join("\n");
            assert!(text.contains(
                "ENGINE = Distributed(fleet, tw, flows_raw_local, cityHash64(sensor_id))"
            ));
            assert!(text.contains(
                "ENGINE = Distributed(fleet, tw, schema_migrations_local, cityHash64(version))"
            ));
            assert!(
                !text.contains("ENGINE = MergeTree")
                    && !text.contains("ENGINE = ReplacingMergeTree")
            );
        }
    }

    #[test]
    fn versions_parse_and_order() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        let new = ServerVersion::parse("26.9.1.1").unwrap();
        assert!(!Caps::for_version(old).modern);
        assert!(Caps::for_version(new).modern);
        assert!(ServerVersion::parse("banana").is_err());
    }

    #[test]
    fn legacy_render_has_no_modern_features() {
        let caps = Caps::for_version(ServerVersion {
            major: 18,
            minor: 16,
        });
        let all = render(&MIGRATIONS[0], caps, &opts()).unwrap().join("\n");
        for word in ["LowCardinality", "CODEC", "TTL", "IPv6", "{{", "@modern"] {
            assert!(!all.contains(word), "legacy schema contains {word}");
        }
        assert!(all.contains("CREATE TABLE IF NOT EXISTS tw.flows_raw"));
    }

    #[test]
    fn modern_render_uses_modern_features() {
        let caps = Caps::for_version(ServerVersion {
            major: 24,
            minor: 8,
        });
        let stmts = render(&MIGRATIONS[0], caps, &opts()).unwrap();
        let all = stmts.join("\n");
        for word in [
            "LowCardinality(String)",
            "CODEC(Delta, ZSTD(1))",
            "INTERVAL 30 DAY",
            "IPv6",
        ] {
            assert!(all.contains(word), "modern schema lacks {word}");
        }
        assert!(stmts.iter().all(|s| !s.ends_with(';')));
    }

    #[test]
    fn bad_markers_and_placeholders_are_errors() {
        let caps = Caps::for_version(ServerVersion {
            major: 24,
            minor: 8,
        });
        let m = Migration {
            version: 9,
            name: "x",
            sql: "-- @modern\nSELECT 1;\n",
        };
        assert!(matches!(
            render(&m, caps, &opts()),
            Err(SchemaError::Markers(9))
        ));
        let m = Migration {
            version: 9,
            name: "x",
            sql: "SELECT {{nope}};\n",
        };
        assert!(matches!(
            render(&m, caps, &opts()),
            Err(SchemaError::Placeholder(9, _))
        ));
    }
}
