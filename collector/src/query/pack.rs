//! The analysts' query pack: one documented SQL file per question in
//! `deploy/clickhouse/queries/`, compiled in; `{placeholders}` are filled
//! here from checked flag values (numbers formatted by Rust, strings quoted
//! and escaped), so the same text runs on ClickHouse 18.16 (which has no
//! server-side query parameters) and on modern servers.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

use super::{print_rows, OutputFormat, Window};
use crate::clickhouse_args::ClickHouseArgs;

pub struct PackQuery {
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! pack {
    ($($name:literal),* $(,)?) => {
        &[$(PackQuery {
            name: $name,
            sql: include_str!(concat!("../../../deploy/clickhouse/queries/", $name, ".sql")),
        }),*]
    };
}

/// Every query of the pack.
pub const PACK: &[PackQuery] = pack!(
    "new-destinations",
    "volume-spikes",
    "beaconing",
    "ot-writes",
    "segmentation",
    "scans",
    "asset-changes",
    "campaigns",
    "sensor-health",
);

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

/// The values every query understands, from the common flags.
pub fn common_values(c: &Common) -> anyhow::Result<BTreeMap<&'static str, Lit>> {
    let (since, until) = c.window.resolve()?;
    let vessel = c.vessel.clone().unwrap_or_default();
    if vessel.contains('?') {
        bail!("--vessel must not contain '?'");
    }
    let mut v = BTreeMap::new();
    v.insert("since", Lit::Int(since));
    v.insert("until", Lit::Int(until));
    v.insert(
        "baseline_since",
        Lit::Int((since - c.baseline_days as i64 * 86_400).max(0)),
    );
    v.insert("vessel", Lit::Str(vessel));
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

/// Renders and runs (or prints) pack query `name`.
pub async fn run(
    ch: &ClickHouseArgs,
    name: &str,
    common: &Common,
    extra: Vec<(&'static str, Lit)>,
) -> anyhow::Result<()> {
    let q = find(name)?;
    let mut values = common_values(common)?;
    values.extend(extra);
    let sql = render(q, &values)?;
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
        assert_eq!(PACK.len(), 9);
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
