//! `tidewatch-collector maintenance`: retention by partition dropping, for
//! servers without TTL (ClickHouse before 21.8 gets no TTL clause from
//! `migrate`); on modern servers TTL does it continuously and this command
//! only reclaims space sooner.
//!
//! Raw flows are partitioned by day of capture and kept
//! `--flow-retention-days`; the hourly rollups, assets and sensor status
//! are partitioned by month and kept `--rollup-retention-days` (longer, so
//! analysts keep baselines after the raw flows are gone). A partition is
//! dropped only when all of it is older than the retention.
//!
//! On a cluster (`--cluster`, as given to `migrate`) the partitions are
//! those of the per-node tables (`flows_raw_local`, ...) on every shard,
//! read from one live replica of each, and each is dropped on one node of
//! every shard ([`ShardNodes`], not `ON CLUSTER`: see
//! [`crate::schema::cluster`] for why); replication drops it on the
//! others (at once, or when a replica that was down comes back).

use anyhow::{bail, Context};
use clickhouse::Client;
use serde::Deserialize;

use crate::clickhouse_args::{ClickHouseArgs, ClusterArgs};
use crate::schema::cluster::{ShardNodes, LOCAL_SUFFIX};
use time::{Date, Month, OffsetDateTime};

/// (table, partition granularity, retention class).
const TABLES: &[(&str, Granularity, Keep)] = &[
    ("flows_raw", Granularity::Day, Keep::Flows),
    ("traffic_hourly_raw", Granularity::Month, Keep::Rollups),
    ("dest_hourly_raw", Granularity::Month, Keep::Rollups),
    ("assets_raw", Granularity::Month, Keep::Rollups),
    ("sensor_status_raw", Granularity::Month, Keep::Rollups),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Granularity {
    /// Partition key toYYYYMMDD: "20260131".
    Day,
    /// Partition key toYYYYMM: "202601".
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Keep {
    Flows,
    Rollups,
}

#[derive(Debug, clap::Subcommand)]
pub enum MaintenanceCmd {
    /// Drop partitions older than the retention.
    Retention {
        /// Days of raw flows to keep.
        #[arg(long, default_value_t = 90)]
        flow_retention_days: u32,
        /// Days of rollups, assets and sensor status to keep (at least as
        /// long as the flows).
        #[arg(long, default_value_t = 400)]
        rollup_retention_days: u32,
        /// List what would be dropped without dropping it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// Where partitions are listed and dropped.
enum Layout {
    Single,
    /// The cluster's name and one node of each shard: partitions are read
    /// from one live replica of each shard through `cluster()` (with the
    /// credentials of the servers' `remote_servers`).
    Cluster(String, ShardNodes),
}

impl Layout {
    async fn new(ch: &ClickHouseArgs, cluster: ClusterArgs) -> anyhow::Result<Layout> {
        cluster.validate()?;
        let Some(name) = cluster.cluster else {
            return Ok(Layout::Single);
        };
        let server = ch.server_client();
        crate::schema::cluster::ensure_known(&server, &name).await?;
        let nodes = ShardNodes::find(&server, ch, &name, &cluster.cluster_nodes).await?;
        Ok(Layout::Cluster(name, nodes))
    }

    /// The active partitions of `table` (on every shard of a cluster).
    async fn partitions(
        &self,
        ch: &Client,
        database: &str,
        table: &str,
    ) -> anyhow::Result<Vec<String>> {
        let (parts, table) = match self {
            Layout::Single => ("system.parts".to_string(), table.to_string()),
            Layout::Cluster(name, _) => (
                format!("cluster('{name}', system, parts)"),
                format!("{table}{LOCAL_SUFFIX}"),
            ),
        };
        let rows: Vec<Part> = ch
            .query(&format!(
                "SELECT DISTINCT partition FROM {parts} \
                 WHERE database = ? AND table = ? AND active ORDER BY partition"
            ))
            .bind(database)
            .bind(&table)
            .fetch_all()
            .await
            .with_context(|| format!("listing the partitions of {database}.{table}"))?;
        Ok(rows.into_iter().map(|p| p.partition).collect())
    }

    async fn drop_partition(
        &self,
        ch: &Client,
        database: &str,
        table: &str,
        id: &str,
    ) -> anyhow::Result<()> {
        match self {
            Layout::Single => {
                ch.query(&format!(
                    "ALTER TABLE {database}.{table} DROP PARTITION {id}"
                ))
                .execute()
                .await?
            }
            Layout::Cluster(_, nodes) => {
                nodes
                    .execute(&format!(
                        "ALTER TABLE {database}.{table}{LOCAL_SUFFIX} DROP PARTITION {id}"
                    ))
                    .await?
            }
        }
        Ok(())
    }
}

/// The last day a partition covers, or `None` for a partition id this
/// command does not understand (left alone).
fn last_day(id: &str, g: Granularity) -> Option<Date> {
    let n: u32 = id.parse().ok()?;
    match g {
        Granularity::Day => {
            let (y, m, d) = (n / 10_000, n / 100 % 100, n % 100);
            Date::from_calendar_date(y as i32, Month::try_from(m as u8).ok()?, d as u8).ok()
        }
        Granularity::Month => {
            let (y, m) = (n / 100, n % 100);
            let month = Month::try_from(m as u8).ok()?;
            let first = Date::from_calendar_date(y as i32, month, 1).ok()?;
            let next = if month == Month::December {
                Date::from_calendar_date(y as i32 + 1, Month::January, 1).ok()?
            } else {
                Date::from_calendar_date(y as i32, month.next(), 1).ok()?
            };
            Some(first.max(next.previous_day()?))
        }
    }
}

/// Partitions (ids) of `table` entirely older than `keep_days` before `today`.
fn expired(ids: &[String], g: Granularity, today: Date, keep_days: u32) -> Vec<String> {
    let cutoff = today - time::Duration::days(keep_days as i64);
    ids.iter()
        .filter(|id| last_day(id, g).is_some_and(|d| d < cutoff))
        .cloned()
        .collect()
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Part {
    partition: String,
}

pub async fn run(args: &ClickHouseArgs, cmd: MaintenanceCmd) -> anyhow::Result<()> {
    let ch = &args.server_client();
    let database = args.clickhouse_database.as_str();
    let MaintenanceCmd::Retention {
        flow_retention_days,
        rollup_retention_days,
        dry_run,
        cluster,
    } = cmd;
    if flow_retention_days == 0 || rollup_retention_days < flow_retention_days {
        bail!(
            "--flow-retention-days must be at least 1 and --rollup-retention-days at least as long"
        );
    }
    let layout = Layout::new(args, cluster).await?;
    let today = OffsetDateTime::now_utc().date();
    let mut dropped = 0;
    for (table, g, keep) in TABLES {
        let ids = layout.partitions(ch, database, table).await?;
        let days = match keep {
            Keep::Flows => flow_retention_days,
            Keep::Rollups => rollup_retention_days,
        };
        for id in expired(&ids, *g, today, days) {
            if dry_run {
                println!("would drop {database}.{table} partition {id} (older than {days} days)");
                continue;
            }
            layout
                .drop_partition(ch, database, table, &id)
                .await
                .with_context(|| format!("dropping {database}.{table} partition {id}"))?;
            println!("dropped {database}.{table} partition {id} (older than {days} days)");
            dropped += 1;
        }
    }
    if !dry_run {
        println!("retention: {dropped} partition(s) dropped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u8, day: u8) -> Date {
        Date::from_calendar_date(y, Month::try_from(m).unwrap(), day).unwrap()
    }

    #[test]
    fn only_partitions_wholly_past_the_retention_expire() {
        let ids: Vec<String> = ["20260101", "20260102", "20260103", "junk"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Cutoff 2026-01-03: the first two days are older.
        assert_eq!(
            expired(&ids, Granularity::Day, d(2026, 1, 13), 10),
            ["20260101", "20260102"]
        );
        let months: Vec<String> = ["202512", "202601", "202602"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Cutoff 2026-02-01: January ends before it, February does not.
        assert_eq!(
            expired(&months, Granularity::Month, d(2026, 3, 3), 30),
            ["202512", "202601"]
        );
        assert_eq!(last_day("202602", Granularity::Month), Some(d(2026, 2, 28)));
        assert_eq!(
            last_day("202612", Granularity::Month),
            Some(d(2026, 12, 31))
        );
        assert!(last_day("20261341", Granularity::Day).is_none());
    }
}
