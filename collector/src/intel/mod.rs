//! `tidewatch-collector intel`: threat-intelligence indicators, loaded from
//! feeds ([`feeds`]) into ClickHouse (`intel_indicators`), and hunted for
//! over the stored flows of the whole fleet.
//!
//! `intel load FILE` parses the whole feed first (nothing is written if any
//! part is wrong, the error names the line or object) and writes its
//! indicators under the feed's source name; loading a feed again replaces
//! what an earlier load of the same source wrote for the same indicators.
//! `intel hunt --since 90d` is the retro-hunt: every stored flow whose
//! client or server address, or one of whose names (DNS query, TLS SNI,
//! HTTP Host), equals an indicator, so that an indicator published today
//! finds the vessel that contacted it last month. A contact after an
//! indicator's end of validity is not reported.

pub mod feeds;

use std::path::PathBuf;

use anyhow::Context;
use clickhouse::Client;
use serde::{Deserialize, Serialize};

use crate::query::{print_rows, OutputFormat, Window};
use feeds::{Feed, Format};

#[derive(Debug, clap::Subcommand)]
pub enum IntelCmd {
    /// Load a feed: a STIX 2.1 bundle, a MISP JSON export or a plain list
    /// (one IP, domain or URL per line; a description after a comma).
    Load {
        file: PathBuf,
        /// Source name the indicators are kept under (default: the file name
        /// without its extension).
        #[arg(long)]
        source: Option<String>,
        /// The feed's format (default: detected).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Only parse and check the feed.
        #[arg(long)]
        check: bool,
    },
    /// Flows of the fleet that contacted an indicator, over stored history.
    Hunt {
        #[command(flatten)]
        window: Window,
        /// Only indicators of this source.
        #[arg(long)]
        source: Option<String>,
        /// Only this vessel.
        #[arg(long)]
        vessel: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// The indicators loaded, by source.
    List {
        #[arg(long)]
        source: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, clickhouse::Row)]
struct IndicatorRow {
    source: String,
    kind: String,
    value: String,
    matches: String,
    feed_format: String,
    reference: String,
    description: String,
    valid_from: u32,
    valid_until: u32,
    loaded_at: u32,
    version: u64,
}

/// One contact found by the hunt.
#[derive(Debug, Clone, Serialize, Deserialize, clickhouse::Row)]
pub struct Contact {
    pub vessel: String,
    pub sensor_id: String,
    pub first_seen: String,
    pub client_ip: String,
    pub server_ip: String,
    pub server_port: u16,
    pub app_protocol: String,
    pub matched: String,
    pub kind: String,
    pub indicator: String,
    pub source: String,
    pub description: String,
    /// The flow's key and time, for the record.
    pub first_seen_us: i64,
    pub batch_seq: u64,
    pub record_idx: u32,
    pub client_port: u16,
}

fn unix_u32(t: i64) -> u32 {
    t.clamp(0, u32::MAX as i64) as u32
}

/// Writes a parsed feed under `source`; how many rows.
pub async fn load(ch: &Client, source: &str, feed: &Feed) -> anyhow::Result<usize> {
    let now_us = tidewatch_proto::util::now_us().max(0) as u64;
    let mut ins = ch
        .insert::<IndicatorRow>("intel_indicators_raw")
        .await
        .context("writing indicators (run `migrate` first)")?;
    for i in &feed.indicators {
        ins.write(&IndicatorRow {
            source: source.to_string(),
            kind: i.kind.name().to_string(),
            value: i.value.clone(),
            matches: i.matches.clone(),
            feed_format: feed.format.to_string(),
            reference: i.reference.clone(),
            description: i.description.clone(),
            valid_from: unix_u32(i.valid_from),
            valid_until: unix_u32(i.valid_until),
            loaded_at: (now_us / 1_000_000) as u32,
            version: now_us,
        })
        .await?;
    }
    ins.end().await.context("writing indicators")?;
    Ok(feed.indicators.len())
}

/// Which indicators and flows a hunt covers (beside its time window).
#[derive(Debug, Default, Clone, Copy)]
pub struct HuntFilter<'a> {
    /// Only indicators of this source.
    pub source: Option<&'a str>,
    /// Only indicators of this load (`version`).
    pub version: Option<u64>,
    /// Only flows of this vessel.
    pub vessel: Option<&'a str>,
}

/// The retro-hunt: flows in [since, until) whose addresses or names
/// (lowercased, as names compare) equal an indicator's `matches` while it
/// was valid (one JOIN; works on ClickHouse 18.16), in time order.
pub async fn hunt(
    ch: &Client,
    since: i64,
    until: i64,
    filter: HuntFilter<'_>,
) -> Result<Vec<Contact>, clickhouse::error::Error> {
    let vessel = if filter.vessel.is_some() {
        " AND vessel = ?"
    } else {
        ""
    };
    let source = if filter.source.is_some() {
        " AND source = ?"
    } else {
        ""
    };
    let version = if filter.version.is_some() {
        " AND version = ?"
    } else {
        ""
    };
    let sql = format!(
        "SELECT vessel, sensor_id, toString(toDateTime(intDiv(first_seen_us, 1000000))) AS first_seen, \
         client_ip, server_ip, server_port, app_protocol, matched, kind, value AS indicator, source, description, \
         first_seen_us, batch_seq, record_idx, client_port \
         FROM ( \
           SELECT vessel, sensor_id, batch_seq, record_idx, first_seen_us, client_ip, server_ip, client_port, server_port, app_protocol, \
             arrayJoin(arrayConcat([client_ip, server_ip], arrayMap(x -> lower(x), indicators))) AS matched \
           FROM flows \
           WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000{vessel} \
         ) ALL INNER JOIN ( \
           SELECT matches AS matched, kind, value, source, description, valid_until \
           FROM intel_indicators WHERE 1{source}{version} \
         ) USING matched \
         WHERE valid_until = toDateTime(0) OR first_seen_us <= toUInt64(valid_until) * 1000000 \
         ORDER BY first_seen_us, vessel, sensor_id, matched, source"
    );
    let mut q = ch.query(&sql);
    // In the order the SQL holds them: the vessel (flows) first.
    if let Some(v) = filter.vessel {
        q = q.bind(v);
    }
    if let Some(s) = filter.source {
        q = q.bind(s);
    }
    if let Some(v) = filter.version {
        q = q.bind(v);
    }
    q.fetch_all().await
}

pub async fn run(ch: &Client, cmd: IntelCmd) -> anyhow::Result<()> {
    match cmd {
        IntelCmd::Load {
            file,
            source,
            format,
            check,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let feed = feeds::parse(&text, format)
                .with_context(|| format!("feed {} refused, nothing loaded", file.display()))?;
            let source = match source {
                Some(s) => s,
                None => file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "feed".into()),
            };
            let skipped: usize = feed.skipped.values().sum();
            let detail = feed
                .skipped
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let n = if check {
                feed.indicators.len()
            } else {
                load(ch, &source, &feed).await?
            };
            let skipped = if skipped == 0 {
                String::new()
            } else {
                format!("; {skipped} skipped, of kinds that cannot match a flow ({detail})")
            };
            println!(
                "{} {n} indicator(s) from {} ({} feed) as source {source:?}{skipped}",
                if check { "checked" } else { "loaded" },
                file.display(),
                feed.format,
            );
        }
        IntelCmd::Hunt {
            window,
            source,
            vessel,
            format,
        } => {
            let (since, until) = window.resolve()?;
            let filter = HuntFilter {
                source: source.as_deref(),
                vessel: vessel.as_deref(),
                version: None,
            };
            let rows = hunt(ch, since, until, filter)
                .await
                .context("hunting (run `migrate` first)")?;
            print_rows(&rows, format)?;
        }
        IntelCmd::List { source, format } => {
            let mut sql = "SELECT ?fields FROM intel_indicators".to_string();
            if source.is_some() {
                sql.push_str(" WHERE source = ?");
            }
            sql.push_str(" ORDER BY source, kind, value");
            let mut q = ch.query(&sql);
            if let Some(s) = &source {
                q = q.bind(s);
            }
            let rows: Vec<IndicatorRow> = q.fetch_all().await?;
            print_rows(&rows, format)?;
        }
    }
    Ok(())
}
