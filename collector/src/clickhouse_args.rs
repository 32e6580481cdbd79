//! ClickHouse connection settings shared by `sink`, `migrate` and `query`.

use clickhouse::{Client, Compression};

#[derive(Debug, Clone, clap::Args)]
pub struct ClickHouseArgs {
    /// ClickHouse HTTP endpoint.
    #[arg(
        long,
        env = "TIDEWATCH_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,
    /// ClickHouse user.
    #[arg(long, env = "TIDEWATCH_CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,
    /// ClickHouse password (prefer the environment variable).
    #[arg(
        long,
        env = "TIDEWATCH_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub clickhouse_password: String,
    /// Database holding the tidewatch tables.
    #[arg(
        long,
        env = "TIDEWATCH_CLICKHOUSE_DATABASE",
        default_value = "tidewatch"
    )]
    pub clickhouse_database: String,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid database name {0:?}: use letters, digits and underscores")]
pub struct BadDatabaseName(pub String);

impl ClickHouseArgs {
    pub fn validate(&self) -> Result<(), BadDatabaseName> {
        let db = &self.clickhouse_database;
        if db.is_empty()
            || db.len() > 64
            || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(BadDatabaseName(db.clone()));
        }
        Ok(())
    }

    /// A client without a default database (for DDL that names it).
    ///
    /// Two settings matter on a cluster (`migrate --cluster`) and change
    /// nothing on a single server:
    /// - `insert_distributed_sync`: an insert into a Distributed table
    ///   returns once every shard has stored its rows, not once they are
    ///   queued on the node it went to. The sink commits Kafka offsets after
    ///   its insert returns, so nothing is acknowledged before it is stored
    ///   where the Distributed reads find it.
    /// - `distributed_product_mode = global`: an `IN` or `JOIN` subquery
    ///   over a Distributed table inside a query over another runs once and
    ///   its result goes to every shard (the query pack's baselines), instead
    ///   of being refused.
    pub fn server_client(&self) -> Client {
        // Schema validation needs RowBinaryWithNamesAndTypes, which old
        // servers (18.16) lack; rows are checked by our own tests instead.
        Client::default()
            .with_url(&self.clickhouse_url)
            .with_user(&self.clickhouse_user)
            .with_password(&self.clickhouse_password)
            .with_compression(Compression::None)
            .with_validation(false)
            .with_setting("insert_distributed_sync", "1")
            .with_setting("distributed_product_mode", "global")
    }

    /// [`Self::server_client`] at another node's HTTP endpoint (same
    /// credentials and settings).
    pub fn server_client_at(&self, url: &str) -> Client {
        self.server_client().with_url(url)
    }

    /// A client whose default database is the tidewatch database.
    pub fn client(&self) -> Client {
        self.server_client()
            .with_database(&self.clickhouse_database)
    }
}

/// The cluster a database is migrated for, and where its nodes answer:
/// `migrate` and `maintenance` run the `ALTER`s of replicated tables on one
/// node of each shard (see [`crate::schema::cluster::ShardNodes`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// The ClickHouse cluster (a name in the servers' `remote_servers`,
    /// with ZooKeeper and the macros `{shard}` and `{replica}` configured)
    /// the schema is migrated for: replicated tables on every node,
    /// Distributed tables over them sharded by sensor, views on every node.
    /// A database is migrated for one topology for good.
    #[arg(long, env = "TIDEWATCH_CLICKHOUSE_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// HTTP endpoint of a node of the cluster (repeat the flag, or separate
    /// with commas in the environment). ALTERs of replicated tables go to
    /// one node of each shard, found by its `{shard}` macro. Default: every
    /// host of the cluster in `system.clusters`, at the scheme and port of
    /// --clickhouse-url (right when all nodes serve HTTP on one port).
    /// Unused without --cluster.
    #[arg(
        long = "cluster-node",
        env = "TIDEWATCH_CLICKHOUSE_CLUSTER_NODES",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub cluster_nodes: Vec<String>,
}

impl ClusterArgs {
    /// Refuses a cluster name that could not be written into SQL as is.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(c) = &self.cluster {
            if c.is_empty() || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                anyhow::bail!("--cluster {c:?}: use letters, digits and underscores");
            }
        }
        for url in &self.cluster_nodes {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!(
                    "--cluster-node {url:?}: give an HTTP endpoint such as http://host:8123"
                );
            }
        }
        Ok(())
    }
}
