//! The cluster rendering of the schema (`migrate --cluster NAME`): the
//! single-node statements of every migration, rewritten for a ClickHouse
//! cluster of shards × replicas.
//!
//! - A table `T` becomes `T_local` on every node, the replicated variant of
//!   its engine (ZooKeeper path `/clickhouse/tables/{shard}/DB.T`, replica
//!   `{replica}`: the macros of each node), and `T` a `Distributed` table
//!   over the `T_local` of every shard. Everything that wrote or read `T`
//!   keeps doing so, now through the Distributed table: the sink's inserts,
//!   the analyst views, the query pack.
//! - **Sharding key**: `cityHash64(sensor_id)` for every table whose sorting
//!   key holds `sensor_id` (flows, assets, status, the batch ledger, the
//!   rollups, the registry), otherwise the first column of the sorting key.
//!   The copies of a row that the ReplacingMergeTree collapses share their
//!   whole sorting key, so they always land on the same shard: `FINAL`
//!   (which the Distributed table passes on to each shard) stays exact,
//!   shard by shard, and a resent batch is never counted twice. All of one
//!   sensor's data sits on one shard.
//! - `MATERIALIZED` columns are `ALIAS` in the Distributed table (computed
//!   from the same expression): a Distributed table that computed them on
//!   insert would send them on, and the shards refuse them.
//! - Views, materialized views and the database are created `ON CLUSTER`
//!   (each node has its own, reading the Distributed tables).
//! - `ALTER`s of the local tables are sent **without** `ON CLUSTER` to one
//!   node of each shard ([`ShardNodes`], [`Statement::EachShard`]):
//!   replication carries them to the shard's other replicas, and the
//!   server answers once every replica has applied them. Sent `ON
//!   CLUSTER`, ClickHouse 18.16's DDL worker picks one replica per shard
//!   with a check-then-lock that races: two replicas can both run the
//!   `ALTER`, the second then fails to mark the shard done (ZooKeeper
//!   "node exists") and its DDL worker stops, so the statement and every
//!   later `ON CLUSTER` one wait out their timeout.
//! - A column added to a local table is added to the Distributed table by
//!   creating it again (it holds no data: inserts are synchronous, see
//!   [`crate::clickhouse_args`]).
//!
//! So the rendering follows the tables through the migrations in order
//! ([`Distribute`] keeps their columns); a statement it does not know how
//! to distribute is an error, never passed through unchanged.

use std::collections::BTreeMap;

use clickhouse::Client;
use tracing::{info, warn};

use super::{SchemaError, Statement};
use crate::clickhouse_args::ClickHouseArgs;

/// A table as the migrations left it.
#[derive(Debug, Clone)]
struct Table {
    /// Column definitions as written (`name Type [MATERIALIZED expr]`).
    columns: Vec<String>,
    shard_key: String,
}

/// Rewrites single-node statements for a cluster, in migration order.
#[derive(Debug)]
pub struct Distribute {
    cluster: String,
    tables: BTreeMap<String, Table>,
}

/// The suffix of the per-node table under a Distributed one.
pub const LOCAL_SUFFIX: &str = "_local";

/// Refuses a cluster the server does not know (not in its
/// `remote_servers`): what `migrate` and `maintenance` check first.
pub async fn ensure_known(server: &clickhouse::Client, name: &str) -> Result<(), SchemaError> {
    let nodes: u64 = server
        .query("SELECT count() FROM system.clusters WHERE cluster = ?")
        .bind(name)
        .fetch_one()
        .await?;
    if nodes == 0 {
        return Err(SchemaError::Topology(format!(
            "cluster {name} is not in this server's remote_servers"
        )));
    }
    Ok(())
}

impl Distribute {
    pub fn new(cluster: &str) -> Self {
        Distribute {
            cluster: cluster.to_string(),
            tables: BTreeMap::new(),
        }
    }

    /// The cluster statements for one single-node statement of `migration`.
    pub fn statement(&mut self, migration: u32, stmt: &str) -> Result<Vec<Statement>, SchemaError> {
        if let Some(rest) = stmt.trim().strip_prefix("ALTER TABLE ") {
            let unsupported = || SchemaError::Cluster(migration, first_line(stmt.trim()));
            let (name, ops) = split_name(rest).ok_or_else(unsupported)?;
            return self.alter(migration, name, ops);
        }
        Ok(self
            .on_server(migration, stmt)?
            .into_iter()
            .map(Statement::Server)
            .collect())
    }

    /// A statement other than an `ALTER`: all run on the server migrate
    /// connects to.
    fn on_server(&mut self, migration: u32, stmt: &str) -> Result<Vec<String>, SchemaError> {
        let s = stmt.trim();
        let unsupported = || SchemaError::Cluster(migration, first_line(s));
        let c = &self.cluster;
        if let Some(rest) = s.strip_prefix("CREATE DATABASE IF NOT EXISTS ") {
            return Ok(vec![format!(
                "CREATE DATABASE IF NOT EXISTS {} ON CLUSTER {c}",
                rest.trim()
            )]);
        }
        if let Some(rest) = s.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
            let (name, rest) = split_name(rest).ok_or_else(unsupported)?;
            return self.create_table(migration, name, rest);
        }
        for prefix in [
            "CREATE VIEW IF NOT EXISTS ",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS ",
        ] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let (name, rest) = split_name(rest).ok_or_else(unsupported)?;
                return Ok(vec![format!("{prefix}{name} ON CLUSTER {c} {rest}")]);
            }
        }
        if let Some(rest) = s.strip_prefix("DROP TABLE IF EXISTS ") {
            let (name, rest) = split_name(rest).ok_or_else(unsupported)?;
            if !rest.is_empty() {
                return Err(unsupported());
            }
            if self.tables.remove(name).is_some() {
                return Ok(vec![
                    format!("DROP TABLE IF EXISTS {name} ON CLUSTER {c}"),
                    format!("DROP TABLE IF EXISTS {name}{LOCAL_SUFFIX} ON CLUSTER {c}"),
                ]);
            }
            return Ok(vec![format!("DROP TABLE IF EXISTS {name} ON CLUSTER {c}")]);
        }
        if s.starts_with("INSERT INTO ") {
            // Through the Distributed tables, once, like any insert.
            return Ok(vec![s.to_string()]);
        }
        Err(unsupported())
    }

    fn create_table(
        &mut self,
        migration: u32,
        name: &str,
        rest: &str,
    ) -> Result<Vec<String>, SchemaError> {
        let bad = |what: &str| SchemaError::Cluster(migration, format!("{name}: {what}"));
        let rest = rest.trim_start();
        if !rest.starts_with('(') {
            return Err(bad("no column list"));
        }
        let close = matching_paren(rest, 0).ok_or_else(|| bad("unbalanced parentheses"))?;
        let columns: Vec<String> = split_top(&rest[1..close])
            .into_iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        let tail = rest[close + 1..].trim_start();
        let engine_part = tail
            .strip_prefix("ENGINE = ")
            .ok_or_else(|| bad("no ENGINE = after the columns"))?;
        let engine_end = engine_part
            .find(|c: char| c == '(' || c.is_whitespace())
            .unwrap_or(engine_part.len());
        let engine = &engine_part[..engine_end];
        if !engine.ends_with("MergeTree") || engine.starts_with("Replicated") {
            return Err(bad(&format!(
                "engine {engine} has no replicated variant here"
            )));
        }
        let mut after = &engine_part[engine_end..];
        let mut args = String::new();
        if after.starts_with('(') {
            let close = matching_paren(after, 0).ok_or_else(|| bad("unbalanced ENGINE"))?;
            let inner = after[1..close].trim();
            if !inner.is_empty() {
                args = format!(", {inner}");
            }
            after = &after[close + 1..];
        }
        let settings = after.trim();
        let order_by = sorting_key(settings).ok_or_else(|| bad("no ORDER BY"))?;
        let shard_key = if order_by.iter().any(|k| k == "sensor_id") {
            "sensor_id".to_string()
        } else {
            order_by[0].clone()
        };
        let table = Table { columns, shard_key };
        let c = &self.cluster;
        let local = format!(
            "CREATE TABLE IF NOT EXISTS {name}{LOCAL_SUFFIX} ON CLUSTER {c}\n(\n    {}\n)\n\
             ENGINE = Replicated{engine}('/clickhouse/tables/{{shard}}/{name}', '{{replica}}'{args})\n{settings}",
            table.columns.join(",\n    ")
        );
        let dist = self.distributed(name, &table);
        self.tables.insert(name.to_string(), table);
        Ok(vec![local, dist])
    }

    /// The Distributed table `name` over `name_local` on every shard.
    fn distributed(&self, name: &str, t: &Table) -> String {
        let (db, table) = name.split_once('.').unwrap_or(("", name));
        let columns: Vec<String> = t.columns.iter().map(|c| distributed_column(c)).collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {name} ON CLUSTER {c}\n(\n    {}\n)\n\
             ENGINE = Distributed({c}, {db}, {table}{LOCAL_SUFFIX}, cityHash64({}))",
            columns.join(",\n    "),
            t.shard_key,
            c = self.cluster,
        )
    }

    fn alter(
        &mut self,
        migration: u32,
        name: &str,
        ops: &str,
    ) -> Result<Vec<Statement>, SchemaError> {
        let c = self.cluster.clone();
        let Some(mut table) = self.tables.get(name).cloned() else {
            return Err(SchemaError::Cluster(
                migration,
                format!("ALTER TABLE {name}: not a table of the schema"),
            ));
        };
        let mut out = vec![Statement::EachShard(format!(
            "ALTER TABLE {name}{LOCAL_SUFFIX} {}",
            ops.trim()
        ))];
        let mut added = false;
        for op in split_top(ops) {
            let op = op.trim();
            if let Some(def) = op.strip_prefix("ADD COLUMN ") {
                let def = def.trim_start();
                let def = def.strip_prefix("IF NOT EXISTS ").unwrap_or(def).trim();
                let col = def.split_whitespace().next().unwrap_or_default();
                if !table
                    .columns
                    .iter()
                    .any(|c| c.split_whitespace().next() == Some(col))
                {
                    table.columns.push(def.to_string());
                    added = true;
                }
            } else if !op.starts_with("MODIFY TTL ") {
                return Err(SchemaError::Cluster(
                    migration,
                    format!("ALTER TABLE {name}: cannot distribute {}", first_line(op)),
                ));
            }
        }
        if added {
            out.push(Statement::Server(format!(
                "DROP TABLE IF EXISTS {name} ON CLUSTER {c}"
            )));
            out.push(Statement::Server(self.distributed(name, &table)));
            self.tables.insert(name.to_string(), table);
        }
        Ok(out)
    }
}

/// One node of each shard of a cluster, where the `ALTER`s of replicated
/// tables run (see the module docs for why not `ON CLUSTER`). A node's
/// shard is its `{shard}` macro: the one in the replicated tables'
/// ZooKeeper paths, so the nodes that share it replicate each other's
/// `ALTER`s.
pub struct ShardNodes {
    /// (shard macro, URL, client), one per shard.
    nodes: Vec<(String, String, Client)>,
}

impl ShardNodes {
    /// Asks each candidate node for its shard and keeps the first that
    /// answers for each. The candidates are `given`, or else every host of
    /// the cluster at the scheme and port of `ch`'s URL. Every shard of the
    /// cluster must be reached.
    pub async fn find(
        server: &Client,
        ch: &ClickHouseArgs,
        cluster: &str,
        given: &[String],
    ) -> Result<ShardNodes, SchemaError> {
        let shards: u64 = server
            .query("SELECT uniqExact(shard_num) FROM system.clusters WHERE cluster = ?")
            .bind(cluster)
            .fetch_one()
            .await?;
        let candidates: Vec<String> = if given.is_empty() {
            let hosts: Vec<String> = server
                .query(
                    "SELECT DISTINCT host_name FROM system.clusters \
                     WHERE cluster = ? ORDER BY host_name",
                )
                .bind(cluster)
                .fetch_all()
                .await?;
            hosts
                .iter()
                .filter_map(|h| with_host(&ch.clickhouse_url, h))
                .collect()
        } else {
            given.to_vec()
        };
        let mut nodes: Vec<(String, String, Client)> = Vec::new();
        let mut tried = Vec::new();
        for url in candidates {
            let client = ch.server_client_at(&url);
            let shard = client
                .query("SELECT substitution FROM system.macros WHERE macro = 'shard'")
                .fetch_optional::<String>()
                .await;
            match shard {
                Ok(Some(shard)) => {
                    tried.push(format!("{url}: shard {shard}"));
                    if !nodes.iter().any(|(s, _, _)| *s == shard) {
                        nodes.push((shard, url, client));
                    }
                }
                Ok(None) => tried.push(format!("{url}: no {{shard}} macro")),
                Err(e) => {
                    warn!(node = %url, error = %e, "cluster node did not answer");
                    tried.push(format!("{url}: {e}"));
                }
            }
        }
        if (nodes.len() as u64) < shards {
            return Err(SchemaError::Topology(format!(
                "cluster {cluster} has {shards} shards but nodes of only {} answered ({}); \
                 give a node of every shard with --cluster-node URL",
                nodes.len(),
                tried.join("; ")
            )));
        }
        info!(
            cluster,
            nodes = ?nodes.iter().map(|(s, u, _)| format!("shard {s}: {u}")).collect::<Vec<_>>(),
            "one node of each shard"
        );
        Ok(ShardNodes { nodes })
    }

    /// Runs `sql` on the node of each shard in turn. A column added
    /// returns once every replica of the shard has it (ClickHouse 18.16
    /// waits for them all, so `migrate` needs every replica up); a
    /// partition dropped returns once the node asked has dropped it, and
    /// the shard's other replicas drop it from the replication log, a
    /// replica that is down when it comes back (so a dead replica never
    /// holds retention up).
    pub async fn execute(&self, sql: &str) -> Result<(), SchemaError> {
        for (shard, url, client) in &self.nodes {
            client.query(sql).execute().await.map_err(|e| {
                SchemaError::Topology(format!("shard {shard} at {url}: {e}\n{sql}"))
            })?;
        }
        Ok(())
    }
}

/// `url` with its host replaced by `host` (scheme, credentials, port and
/// path kept), or `None` for a URL without a scheme.
fn with_host(url: &str, host: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    // The port follows the host's last ':' outside an IPv6 literal.
    let port = match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') => &hostport[i..],
        _ => "",
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Some(format!("{scheme}://{userinfo}{host}{port}{path}"))
}

/// A column of the Distributed table: no codec (it stores nothing), and
/// computed instead of materialized.
fn distributed_column(def: &str) -> String {
    let mut d = def.to_string();
    if let Some(at) = d.find("CODEC(") {
        if let Some(close) = matching_paren(&d, at + "CODEC".len()) {
            d.replace_range(at..=close, "");
        }
    }
    d.replace(" MATERIALIZED ", " ALIAS ").trim().to_string()
}

/// `db.name` and what follows it.
fn split_name(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(s.len());
    let name = &s[..end];
    (!name.is_empty() && name.contains('.')).then(|| (name, s[end..].trim()))
}

/// The columns of `ORDER BY (a, b)` or `ORDER BY a` in a table's settings.
fn sorting_key(settings: &str) -> Option<Vec<String>> {
    let at = settings.find("ORDER BY ")? + "ORDER BY ".len();
    let rest = settings[at..].trim_start();
    if rest.starts_with('(') {
        let close = matching_paren(rest, 0)?;
        let keys: Vec<String> = split_top(&rest[1..close])
            .into_iter()
            .map(|k| k.trim().to_string())
            .collect();
        (!keys.is_empty() && !keys[0].is_empty()).then_some(keys)
    } else {
        let key = rest.split_whitespace().next()?;
        Some(vec![key.to_string()])
    }
}

/// The index of the `)` closing the `(` at `open`, outside quotes.
fn matching_paren(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quoted = false;
    for (i, ch) in s.char_indices().skip_while(|(i, _)| *i < open) {
        match ch {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `s` split at the commas outside parentheses and quotes.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, ch) in s.char_indices() {
        match ch {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQL of rendered statements, checking that only `ALTER`s run on
    /// each shard.
    fn sql(out: Result<Vec<Statement>, SchemaError>) -> Vec<String> {
        out.unwrap()
            .into_iter()
            .map(|s| {
                assert_eq!(
                    matches!(s, Statement::EachShard(_)),
                    s.sql().starts_with("ALTER TABLE "),
                    "{s}"
                );
                s.sql().to_string()
            })
            .collect()
    }

    #[test]
    fn a_table_becomes_replicated_local_tables_under_a_distributed_one() {
        let mut d = Distribute::new("fleet");
        let out = sql(d.statement(1,
                "CREATE TABLE IF NOT EXISTS tw.flows_raw\n(\n    sensor_id String,\n    batch_seq UInt64,\n    \
                 first_seen_us Int64 CODEC(Delta, ZSTD(1)),\n    first_seen DateTime MATERIALIZED toDateTime(intDiv(first_seen_us, 1000000))\n)\n\
                 ENGINE = ReplacingMergeTree\nPARTITION BY toYYYYMMDD(toDateTime(intDiv(first_seen_us, 1000000)))\n\
                 ORDER BY (sensor_id, batch_seq)"));
        assert_eq!(out.len(), 2);
        assert!(
            out[0].starts_with("CREATE TABLE IF NOT EXISTS tw.flows_raw_local ON CLUSTER fleet")
        );
        assert!(out[0].contains(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tw.flows_raw', '{replica}')"
        ));
        assert!(out[0].contains("CODEC(Delta, ZSTD(1))") && out[0].contains("MATERIALIZED"));
        assert!(out[0].ends_with("ORDER BY (sensor_id, batch_seq)"));
        assert!(out[1]
            .contains("ENGINE = Distributed(fleet, tw, flows_raw_local, cityHash64(sensor_id))"));
        assert!(out[1].contains("first_seen DateTime ALIAS toDateTime"));
        assert!(!out[1].contains("CODEC") && !out[1].contains("MATERIALIZED"));
    }

    #[test]
    fn engine_arguments_and_sharding_keys_are_kept() {
        let mut d = Distribute::new("c");
        let out = sql(d.statement(
            7,
            "CREATE TABLE IF NOT EXISTS tw.alerts_raw (id String, rank UInt64) \
                 ENGINE = ReplacingMergeTree(rank) ORDER BY id",
        ));
        assert!(out[0].contains("('/clickhouse/tables/{shard}/tw.alerts_raw', '{replica}', rank)"));
        assert!(out[1].contains("cityHash64(id)"));
    }

    #[test]
    fn an_added_column_recreates_the_distributed_table() {
        let mut d = Distribute::new("c");
        d.statement(
            1,
            "CREATE TABLE IF NOT EXISTS tw.s (sensor_id String, n UInt64) ENGINE = MergeTree ORDER BY (sensor_id, n)",
        )
        .unwrap();
        let out = sql(d.statement(
            5,
            "ALTER TABLE tw.s\n    ADD COLUMN a UInt64,\n    ADD COLUMN b String",
        ));
        assert_eq!(out.len(), 3, "{out:#?}");
        assert!(out[0].starts_with("ALTER TABLE tw.s_local ADD COLUMN a UInt64"));
        assert_eq!(out[1], "DROP TABLE IF EXISTS tw.s ON CLUSTER c");
        assert!(out[2].contains("a UInt64,\n    b String\n)"), "{}", out[2]);
        // A TTL change touches the local tables only.
        let out = sql(d.statement(
            4,
            "ALTER TABLE tw.s MODIFY TTL toDateTime(n) + INTERVAL 1 DAY",
        ));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn node_urls_keep_all_but_the_host() {
        assert_eq!(
            with_host("https://u:p@ch-0.ch:8443/x", "ch-3.ch").as_deref(),
            Some("https://u:p@ch-3.ch:8443/x")
        );
        assert_eq!(
            with_host("http://127.0.0.1", "::1").as_deref(),
            Some("http://[::1]")
        );
        assert_eq!(
            with_host("http://[::1]:8123", "10.0.0.2").as_deref(),
            Some("http://10.0.0.2:8123")
        );
        assert_eq!(with_host("ch:8123", "x"), None);
    }

    #[test]
    fn views_and_drops_go_on_cluster_and_the_unknown_is_refused() {
        let mut d = Distribute::new("c");
        let out = sql(d.statement(
            1,
            "CREATE VIEW IF NOT EXISTS tw.v AS\nSELECT 1 FROM tw.t FINAL",
        ));
        assert_eq!(
            out,
            ["CREATE VIEW IF NOT EXISTS tw.v ON CLUSTER c AS\nSELECT 1 FROM tw.t FINAL"]
        );
        let out = sql(d.statement(1, "DROP TABLE IF EXISTS tw.v"));
        assert_eq!(out, ["DROP TABLE IF EXISTS tw.v ON CLUSTER c"]);
        assert!(matches!(
            d.statement(3, "OPTIMIZE TABLE tw.t FINAL"),
            Err(SchemaError::Cluster(3, _))
        ));
        assert!(matches!(
            d.statement(3, "ALTER TABLE tw.unknown ADD COLUMN x UInt8"),
            Err(SchemaError::Cluster(3, _))
        ));
        assert!(matches!(
            d.statement(3, "CREATE TABLE IF NOT EXISTS tw.l (x UInt8) ENGINE = Log"),
            Err(SchemaError::Cluster(3, _))
        ));
    }
}
