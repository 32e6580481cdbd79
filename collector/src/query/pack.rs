//! The analysts' query pack: one documented SQL file per question in
//! `deploy/clickhouse/queries/`, compiled in; `{placeholders}` are filled
//! here from checked flag values (numbers formatted by Rust, strings quoted
//! and escaped), so the same text runs on ClickHouse 18.16 (which has no
//! server-side query parameters) and on modern servers.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

use super::{print_rows, OutputFormat, Window};
use crate::clickhouse_args::ClickHouseArgs;

/// One query of the pack, describing itself: its name, its SQL and what
/// each row of its answer is about, so that the detector can raise an
/// alert per row ([`crate::detect::scheduled`]).
#[derive(Debug)]
pub struct PackQuery {
    pub name: &'static str,
    pub sql: &'static str,
    /// The columns naming what a row is about (beside its vessel); an
    /// array column gives one subject per element.
    pub subject: &'static [&'static str],
    /// The column (DateTime) of when it happened; `None`: the window's end.
    pub at: Option<&'static str>,
    /// Rows are about the fleet, not one vessel (no `vessel` column).
    pub fleet_wide: bool,
}

macro_rules! query {
    ($name:literal, subject: [$($s:literal),*], at: $at:expr, fleet_wide: $fw:expr) => {
        PackQuery {
            name: $name,
            sql: include_str!(concat!("../../../deploy/clickhouse/queries/", $name, ".sql")),
            subject: &[$($s),*],
            at: $at,
            fleet_wide: $fw,
        }
    };
    ($name:literal, subject: [$($s:literal),*], at: $at:expr) => {
        query!($name, subject: [$($s),*], at: $at, fleet_wide: false)
    };
}

/// Every query of the pack.
pub const PACK: &[PackQuery] = &[
    query!("new-destinations", subject: ["server_ip"], at: Some("first_at")),
    query!("volume-spikes", subject: ["server_ip"], at: Some("hour")),
    query!("beaconing", subject: ["client_ip", "server_ip", "server_port"], at: Some("first_at")),
    query!("ot-writes", subject: ["client_ip"], at: Some("first_at")),
    query!("segmentation", subject: ["client_ip", "client_zone", "server_zone"], at: Some("first_at")),
    query!("scans", subject: ["client_ip"], at: Some("first_at")),
    query!("remote-access", subject: ["client_ip", "server_ip", "app_protocol"], at: Some("first_at")),
    query!("bridge-450", subject: ["finding", "client_ip", "server_ip"], at: Some("first_at")),
    query!("asset-changes", subject: ["ip", "change"], at: Some("first_at")),
    query!("campaigns", subject: ["server_ip"], at: Some("first_at"), fleet_wide: true),
    query!("sensor-health", subject: ["sensor_id", "problems"], at: None),
];

/// Flags every pack query takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub window: Window,
    /// Days before --since that make the baseline ("seen before").
    #[arg(long, default_value_t = 14)]
    pub baseline_days: u32,
    /// Only this vessel.
    #[arg(long)]
    pub vessel: Option<String>,
    /// Output: an aligned table, a JSON array of objects, or CSV.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Print the SQL (values filled in) instead of running it, e.g. to paste
    /// into clickhouse-client.
    #[arg(long)]
    pub print_sql: bool,
}

/// A placeholder value, rendered as a SQL literal.
#[derive(Debug, Clone)]
pub enum Lit {
    Int(i64),
    Float(f64),
    Str(String),
    Strs(Vec<String>),
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Lit {
    fn sql(&self) -> String {
        match self {
            Lit::Int(i) => i.to_string(),
            Lit::Float(f) => format!("{f}"),
            Lit::Str(s) => quote(s),
            Lit::Strs(v) => format!(
                "CAST([{}] AS Array(String))",
                v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Fills `{name}` placeholders; every placeholder must have a value.
pub fn render(q: &PackQuery, values: &BTreeMap<&'static str, Lit>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(q.sql.len() + 256);
    let mut rest = q.sql;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .with_context(|| format!("query {}: unclosed placeholder", q.name))?;
        let key = &after[..end];
        let v = values
            .get(key)
            .with_context(|| format!("query {}: no value for {{{key}}}", q.name))?;
        out.push_str(&v.sql());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub fn find(name: &str) -> anyhow::Result<&'static PackQuery> {
    PACK.iter()
        .find(|q| q.name == name)
        .with_context(|| format!("no query named {name:?}"))
}

/// The values every query understands, from the common flags, for the
/// window [since, until) (the baseline is the `--baseline-days` before it).
pub fn window_values(
    c: &Common,
    since: i64,
    until: i64,
) -> anyhow::Result<BTreeMap<&'static str, Lit>> {
    values(
        c.vessel.as_deref().unwrap_or_default(),
        c.baseline_days,
        since,
        until,
    )
}

/// The values every query understands: the window [since, until), the
/// baseline of `baseline_days` before it, and the vessel (`""` for all).
pub fn values(
    vessel: &str,
    baseline_days: u32,
    since: i64,
    until: i64,
) -> anyhow::Result<BTreeMap<&'static str, Lit>> {
    if vessel.contains('?') {
        bail!("--vessel must not contain '?'");
    }
    let mut v = BTreeMap::new();
    v.insert("since", Lit::Int(since));
    v.insert("until", Lit::Int(until));
    v.insert(
        "baseline_since",
        Lit::Int((since - baseline_days as i64 * 86_400).max(0)),
    );
    v.insert("vessel", Lit::Str(vessel.to_string()));
    Ok(v)
}

/// A threshold that must be a finite, non-negative number.
pub fn non_negative(name: &str, x: f64) -> anyhow::Result<Lit> {
    if !(x.is_finite() && x >= 0.0) {
        bail!("--{name} must be a non-negative number, got {x}");
    }
    Ok(Lit::Float(x))
}

/// Runs a rendered query; rows as JSON objects, in the server's order.
pub async fn fetch(
    ch: &ClickHouseArgs,
    sql: &str,
) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let bytes = ch
        .client()
        .query(sql)
        .fetch_bytes("JSONEachRow")?
        .collect()
        .await?;
    let text = std::str::from_utf8(&bytes).context("query result is not UTF-8")?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).context("query result row is not JSON"))
        .collect()
}

/// Renders and runs (or prints) a planned pack query.
pub async fn run(ch: &ClickHouseArgs, p: &super::Planned) -> anyhow::Result<()> {
    let (common, name) = (&p.common, p.query.name);
    let (since, until) = common.window.resolve()?;
    let sql = p.sql(since, until)?;
    if common.print_sql {
        println!("{};", sql.trim_end());
        return Ok(());
    }
    let rows = fetch(ch, &sql)
        .await
        .with_context(|| format!("query {name} failed"))?;
    print_rows(&rows, common.format)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values for every placeholder any query uses.
    fn all_values() -> BTreeMap<&'static str, Lit> {
        let mut v = BTreeMap::new();
        for (k, x) in [
            ("since", Lit::Int(1_000)),
            ("until", Lit::Int(2_000)),
            ("baseline_since", Lit::Int(0)),
            ("vessel", Lit::Str("mv-'x".into())),
            ("min_bytes", Lit::Int(1)),
            ("sigmas", Lit::Float(4.0)),
            ("min_count", Lit::Int(20)),
            ("max_jitter", Lit::Float(0.1)),
            ("max_size_cv", Lit::Float(0.05)),
            ("min_period_s", Lit::Float(10.0)),
            ("engineering_hosts", Lit::Strs(vec!["10.0.0.1".into()])),
            ("min_targets", Lit::Int(100)),
            ("min_vessels", Lit::Int(3)),
            ("spread_s", Lit::Int(7200)),
            ("silence_s", Lit::Int(7200)),
            ("min_backlog", Lit::Int(1000)),
        ] {
            v.insert(k, x);
        }
        v
    }

    #[test]
    fn every_query_renders_with_every_placeholder_filled() {
        assert_eq!(PACK.len(), 11);
        for q in PACK {
            let sql = render(q, &all_values()).unwrap();
            assert!(
                !sql.contains('{') && !sql.contains('?'),
                "{}: {sql}",
                q.name
            );
            assert!(sql.contains("'mv-\\'x'") || !q.sql.contains("{vessel}"));
            assert!(q.sql.starts_with("-- "), "{} has no description", q.name);
        }
        let mut missing = all_values();
        missing.remove("since");
        let e = render(find("scans").unwrap(), &missing).unwrap_err();
        assert!(e.to_string().contains("no value for {since}"), "{e}");
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(Lit::Str("a'b\\c".into()).sql(), "'a\\'b\\\\c'");
        assert_eq!(
            Lit::Strs(vec!["x".into(), "y'".into()]).sql(),
            "CAST(['x', 'y\\''] AS Array(String))"
        );
        assert!(non_negative("sigmas", f64::NAN).is_err());
        assert!(non_negative("sigmas", -1.0).is_err());
    }
}
