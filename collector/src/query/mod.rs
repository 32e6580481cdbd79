//! `tidewatch-collector query`: analyst queries over the de-duplicated views.
//! `top-talkers` is built in; the anomaly queries are the pack in [`pack`].

pub mod pack;

use std::io::Write;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::clickhouse_args::ClickHouseArgs;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, clap::Subcommand)]
pub enum QueryCmd {
    /// Top talkers per vessel: client -> server:port pairs by bytes over a time window.
    TopTalkers {
        #[command(flatten)]
        window: Window,
        /// Only this vessel.
        #[arg(long)]
        vessel: Option<String>,
        /// Rows per vessel.
        #[arg(long, default_value_t = 10)]
        limit: u32,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        /// Print the SQL (with the values filled in) instead of running it,
        /// e.g. to paste into clickhouse-client.
        #[arg(long)]
        print_sql: bool,
    },
    /// External destinations a vessel contacted in the window and never in the baseline.
    NewDestinations {
        #[command(flatten)]
        common: pack::Common,
    },
    /// Hours where a vessel sent a destination far more than its baseline.
    VolumeSpikes {
        #[command(flatten)]
        common: pack::Common,
        /// Smallest hourly outbound volume reported, in bytes.
        #[arg(long, default_value_t = 100_000_000)]
        min_bytes: u64,
        /// Standard deviations above the baseline mean.
        #[arg(long, default_value_t = 4.0)]
        sigmas: f64,
    },
    /// Connections to one external destination at a regular period with constant sizes.
    Beaconing {
        #[command(flatten)]
        common: pack::Common,
        /// Fewest connections in the window.
        #[arg(long, default_value_t = 20)]
        min_count: u32,
        /// Largest standard deviation of the gaps, as a share of the period.
        #[arg(long, default_value_t = 0.1)]
        max_jitter: f64,
        /// Largest coefficient of variation of the connection sizes.
        #[arg(long, default_value_t = 0.05)]
        max_size_cv: f64,
        /// Shortest period, in seconds.
        #[arg(long, default_value_t = 10.0)]
        min_period_s: f64,
    },
    /// OT write/control/program operations from hosts that are not engineering stations.
    OtWrites {
        #[command(flatten)]
        common: pack::Common,
        /// An address allowed to write besides the assets seen as
        /// engineering stations (repeatable).
        #[arg(long = "engineering-host", value_name = "IP")]
        engineering_hosts: Vec<std::net::IpAddr>,
    },
    /// Connections into OT zones from outside them (zones from the fleet registry).
    Segmentation {
        #[command(flatten)]
        common: pack::Common,
    },
    /// One source probing many addresses or ports.
    Scans {
        #[command(flatten)]
        common: pack::Common,
        /// Fewest distinct address:port targets.
        #[arg(long, default_value_t = 100)]
        min_targets: u32,
    },
    /// Remote-access sessions (SSH, RDP, VNC, Telnet, by payload) into OT or navigation zones from outside them.
    RemoteAccess {
        #[command(flatten)]
        common: pack::Common,
    },
    /// IEC 61162-450 bridge network findings: bad TAG checksums, one SFI on two nodes, sentences in the wrong group, non-450 traffic in the reserved range, 450 nodes outside 172.16.0.0/12, binary image transfers.
    #[command(name = "bridge-450")]
    Bridge450 {
        #[command(flatten)]
        common: pack::Common,
    },
    /// New assets, known addresses with a new vendor, devices with another firmware.
    AssetChanges {
        #[command(flatten)]
        common: pack::Common,
    },
    /// A new external destination contacted by several vessels within a short time.
    Campaigns {
        #[command(flatten)]
        common: pack::Common,
        /// Fewest vessels.
        #[arg(long, default_value_t = 3)]
        min_vessels: u32,
        /// Longest time between the first and the last vessel's first contact, in seconds.
        #[arg(long, default_value_t = 7200)]
        spread_s: u32,
    },
    /// Silent sensors, growing backlogs, drops, exhausted budgets.
    SensorHealth {
        #[command(flatten)]
        common: pack::Common,
        /// A sensor is silent when its last report is this many seconds before the window's end.
        #[arg(long, default_value_t = 7200)]
        silence_s: u32,
        /// Smallest backlog (records) reported as growing.
        #[arg(long, default_value_t = 1000)]
        min_backlog: u64,
    },
}

/// A value bound to a `?` placeholder.
#[derive(Debug, Clone)]
pub enum SqlValue {
    Int(i64),
    Str(String),
}

/// Fills `?` placeholders in order (strings quoted and escaped), for
/// `--print-sql`. Execution binds the same values through the client.
pub fn render_sql(sql: &str, values: &[SqlValue]) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut it = values.iter();
    for ch in sql.chars() {
        if ch == '?' {
            match it.next() {
                Some(SqlValue::Int(i)) => out.push_str(&i.to_string()),
                Some(SqlValue::Str(s)) => {
                    out.push('\'');
                    out.push_str(&s.replace('\\', "\\\\").replace('\'', "\\'"));
                    out.push('\'');
                }
                None => out.push('?'),
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// A time window on the flows' capture time (first_seen).
#[derive(Debug, Clone, clap::Args)]
pub struct Window {
    /// Start: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS (UTC), Unix seconds, or a
    /// duration back from now such as 30m, 24h, 7d.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// End (exclusive), same forms as --since; default: now.
    #[arg(long)]
    pub until: Option<String>,
}

/// Parses a time argument into Unix seconds.
pub fn parse_time(s: &str, now: i64) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Some((num, unit)) = s
        .char_indices()
        .last()
        .filter(|(_, c)| matches!(c, 's' | 'm' | 'h' | 'd' | 'w'))
        .map(|(i, c)| (&s[..i], c))
    {
        if let Ok(n) = num.parse::<i64>() {
            let mult = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => 7 * 86400,
            };
            return Ok(now - n * mult);
        }
    }
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00:00"));
    let d = crate::pki::parse_date(date).with_context(|| format!("cannot parse time {s:?}"))?;
    let hms: Vec<&str> = time.trim_end_matches('Z').split(':').collect();
    let part = |i: usize| -> anyhow::Result<i64> {
        match hms.get(i) {
            None => Ok(0),
            Some(x) => x
                .parse::<i64>()
                .with_context(|| format!("cannot parse time {s:?}")),
        }
    };
    let (h, m, sec) = (part(0)?, part(1)?, part(2)?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..61).contains(&sec) {
        bail!("cannot parse time {s:?}: hour, minute or second out of range");
    }
    Ok(d.unix_timestamp() + h * 3600 + m * 60 + sec)
}

impl Window {
    pub fn resolve(&self) -> anyhow::Result<(i64, i64)> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let since = parse_time(&self.since, now)?;
        let until = match &self.until {
            Some(u) => parse_time(u, now)?,
            None => now + 1,
        };
        if since >= until {
            bail!("--since must be before --until");
        }
        if since < 0 || until > u32::MAX as i64 {
            bail!("time window outside the range ClickHouse DateTime can hold");
        }
        Ok((since, until))
    }
}

#[derive(Debug, clickhouse::Row, Deserialize, Serialize)]
pub struct TopTalker {
    pub vessel: String,
    pub sensor_id: String,
    pub client_ip: String,
    pub server_ip: String,
    pub server_port: u16,
    pub transport: String,
    pub app_protocol: String,
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

pub const TOP_TALKERS_SQL: &str = "\
SELECT vessel, sensor_id, client_ip, server_ip, server_port, transport, app_protocol,
       count() AS flows,
       sum(c2s_packets + s2c_packets) AS packets,
       sum(c2s_bytes + s2c_bytes) AS bytes
FROM flows
WHERE first_seen >= toDateTime(?) AND first_seen < toDateTime(?) AND (? = '' OR vessel = ?)
GROUP BY vessel, sensor_id, client_ip, server_ip, server_port, transport, app_protocol
ORDER BY vessel, bytes DESC, client_ip, server_ip, server_port
LIMIT ? BY vessel";

/// Values for [`TOP_TALKERS_SQL`]'s placeholders.
pub fn top_talkers_values(
    since: i64,
    until: i64,
    vessel: Option<&str>,
    limit: u32,
) -> Vec<SqlValue> {
    let v = vessel.unwrap_or("").to_string();
    vec![
        SqlValue::Int(since),
        SqlValue::Int(until),
        SqlValue::Str(v.clone()),
        SqlValue::Str(v),
        SqlValue::Int(limit as i64),
    ]
}

pub async fn top_talkers(
    ch: &ClickHouseArgs,
    since: i64,
    until: i64,
    vessel: Option<&str>,
    limit: u32,
) -> anyhow::Result<Vec<TopTalker>> {
    let mut q = ch.client().query(TOP_TALKERS_SQL);
    for v in top_talkers_values(since, until, vessel, limit) {
        q = match v {
            SqlValue::Int(i) => q.bind(i),
            SqlValue::Str(s) => q.bind(s),
        };
    }
    q.fetch_all().await.context("top-talkers query failed")
}

/// A pack query with its flags checked: what [`pack::run`] and the
/// detector's scheduled queries run.
#[derive(Debug)]
pub struct Planned {
    pub query: &'static pack::PackQuery,
    pub common: pack::Common,
    /// The query's own placeholder values.
    pub extra: Vec<(&'static str, pack::Lit)>,
}

/// A `query` command line alone (the detector's rules file gives scheduled
/// queries their flags as they would be typed after `query`).
#[derive(Debug, clap::Parser)]
#[command(name = "query", no_binary_name = true)]
pub struct QueryLine {
    #[command(subcommand)]
    pub cmd: QueryCmd,
}

pub async fn run(ch: ClickHouseArgs, cmd: QueryCmd) -> anyhow::Result<()> {
    ch.validate()?;
    if matches!(cmd, QueryCmd::TopTalkers { .. }) {
        return top_talkers_cmd(ch, cmd).await;
    }
    let p = cmd.plan()?;
    pack::run(&ch, &p).await
}

impl Planned {
    /// Its SQL over the window [since, until), every placeholder filled.
    pub fn sql(&self, since: i64, until: i64) -> anyhow::Result<String> {
        let mut values = pack::window_values(&self.common, since, until)?;
        values.extend(self.extra.iter().cloned());
        pack::render(self.query, &values)
    }
}

impl QueryCmd {
    /// The pack query this command runs, with its values checked.
    pub fn plan(self) -> anyhow::Result<Planned> {
        use pack::Lit;
        let (name, common, extra): (&str, pack::Common, Vec<(&'static str, Lit)>) = match self {
            QueryCmd::NewDestinations { common } => ("new-destinations", common, vec![]),
            QueryCmd::VolumeSpikes {
                common,
                min_bytes,
                sigmas,
            } => (
                "volume-spikes",
                common,
                vec![
                    ("min_bytes", Lit::Int(min_bytes.min(i64::MAX as u64) as i64)),
                    ("sigmas", pack::non_negative("sigmas", sigmas)?),
                ],
            ),
            QueryCmd::Beaconing {
                common,
                min_count,
                max_jitter,
                max_size_cv,
                min_period_s,
            } => (
                "beaconing",
                common,
                vec![
                    ("min_count", Lit::Int(min_count.max(2) as i64)),
                    ("max_jitter", pack::non_negative("max-jitter", max_jitter)?),
                    (
                        "max_size_cv",
                        pack::non_negative("max-size-cv", max_size_cv)?,
                    ),
                    (
                        "min_period_s",
                        pack::non_negative("min-period-s", min_period_s)?,
                    ),
                ],
            ),
            QueryCmd::OtWrites {
                common,
                engineering_hosts,
            } => (
                "ot-writes",
                common,
                vec![(
                    "engineering_hosts",
                    Lit::Strs(engineering_hosts.iter().map(|i| i.to_string()).collect()),
                )],
            ),
            QueryCmd::Segmentation { common } => ("segmentation", common, vec![]),
            QueryCmd::Scans {
                common,
                min_targets,
            } => (
                "scans",
                common,
                vec![("min_targets", Lit::Int(min_targets.max(1) as i64))],
            ),
            QueryCmd::RemoteAccess { common } => ("remote-access", common, vec![]),
            QueryCmd::Bridge450 { common } => ("bridge-450", common, vec![]),
            QueryCmd::AssetChanges { common } => ("asset-changes", common, vec![]),
            QueryCmd::Campaigns {
                common,
                min_vessels,
                spread_s,
            } => (
                "campaigns",
                common,
                vec![
                    ("min_vessels", Lit::Int(min_vessels.max(2) as i64)),
                    ("spread_s", Lit::Int(spread_s as i64)),
                ],
            ),
            QueryCmd::SensorHealth {
                common,
                silence_s,
                min_backlog,
            } => (
                "sensor-health",
                common,
                vec![
                    ("silence_s", Lit::Int(silence_s as i64)),
                    (
                        "min_backlog",
                        Lit::Int(min_backlog.min(i64::MAX as u64) as i64),
                    ),
                ],
            ),
            QueryCmd::TopTalkers { .. } => bail!("top-talkers is not a query of the pack"),
        };
        Ok(Planned {
            query: pack::find(name)?,
            common,
            extra,
        })
    }
}

async fn top_talkers_cmd(ch: ClickHouseArgs, cmd: QueryCmd) -> anyhow::Result<()> {
    match cmd {
        QueryCmd::TopTalkers {
            window,
            vessel,
            limit,
            format,
            print_sql,
        } => {
            let (since, until) = window.resolve()?;
            if print_sql {
                let values = top_talkers_values(since, until, vessel.as_deref(), limit);
                println!("{};", render_sql(TOP_TALKERS_SQL, &values));
                return Ok(());
            }
            let rows = top_talkers(&ch, since, until, vessel.as_deref(), limit).await?;
            print_rows(&rows, format)?;
        }
        _ => unreachable!("only top-talkers is built in"),
    }
    Ok(())
}

/// Prints serialisable rows as an aligned table, a JSON array or CSV.
pub fn print_rows<T: Serialize>(rows: &[T], format: OutputFormat) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let values: Vec<serde_json::Map<String, serde_json::Value>> = rows
        .iter()
        .map(|r| match serde_json::to_value(r) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => bail!("row is not an object"),
            Err(e) => Err(e.into()),
        })
        .collect::<anyhow::Result<_>>()?;
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &values)?;
            writeln!(out)?;
        }
        OutputFormat::Csv | OutputFormat::Table => {
            let Some(first) = values.first() else {
                if matches!(format, OutputFormat::Table) {
                    writeln!(out, "(no rows)")?;
                }
                return Ok(());
            };
            let headers: Vec<String> = first.keys().cloned().collect();
            let cell = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let table: Vec<Vec<String>> = values
                .iter()
                .map(|m| {
                    headers
                        .iter()
                        .map(|h| m.get(h).map(cell).unwrap_or_default())
                        .collect()
                })
                .collect();
            if matches!(format, OutputFormat::Csv) {
                let esc = |s: &str| {
                    if s.contains([',', '"', '\n']) {
                        format!("\"{}\"", s.replace('"', "\"\""))
                    } else {
                        s.to_string()
                    }
                };
                writeln!(
                    out,
                    "{}",
                    headers.iter().map(|h| esc(h)).collect::<Vec<_>>().join(",")
                )?;
                for r in &table {
                    writeln!(
                        out,
                        "{}",
                        r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(",")
                    )?;
                }
            } else {
                let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
                for r in &table {
                    for (i, c) in r.iter().enumerate() {
                        w[i] = w[i].max(c.chars().count());
                    }
                }
                let full = w.clone();
                if let Some(width) = terminal_width() {
                    fit_widths(&mut w, width);
                }
                if w != full {
                    eprintln!(
                        "(long cells cut to fit {} columns, marked …; --format json or csv prints them whole)",
                        terminal_width().unwrap_or_default()
                    );
                }
                let line = |cells: &[String]| {
                    cells
                        .iter()
                        .enumerate()
                        .map(|(i, c)| format!("{:<width$}", cut(c, w[i]), width = w[i]))
                        .collect::<Vec<_>>()
                        .join("  ")
                };
                writeln!(out, "{}", line(&headers).trim_end())?;
                writeln!(
                    out,
                    "{}",
                    w.iter()
                        .map(|n| "-".repeat(*n))
                        .collect::<Vec<_>>()
                        .join("  ")
                )?;
                for r in &table {
                    writeln!(out, "{}", line(r).trim_end())?;
                }
            }
        }
    }
    Ok(())
}

/// Columns a table may take: `COLUMNS` if set, else the terminal's width
/// when standard output is one; `None` (no limit) when writing to a pipe
/// or a file.
fn terminal_width() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS").ok().and_then(|v| v.parse().ok()) {
        return Some(n);
    }
    terminal_size::terminal_size_of(std::io::stdout()).map(|(w, _)| w.0 as usize)
}

/// Narrows the widest columns (headers cut like cells, none below 8
/// characters) until the table, with two spaces between columns, fits in
/// `total` characters, or as far as that floor allows.
fn fit_widths(w: &mut [usize], total: usize) {
    let floor: Vec<usize> = w.iter().map(|&w| w.min(8)).collect();
    let used = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
    while used(w) > total {
        // The widest column that may still shrink gives one character (of
        // equal ones the rightmost: identifiers come first).
        let Some(i) = (0..w.len())
            .filter(|&i| w[i] > floor[i])
            .max_by_key(|&i| (w[i], i))
        else {
            return;
        };
        w[i] -= 1;
    }
}

/// `s` in at most `width` characters: cut, with … as the last one.
pub fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_fit_the_width_by_cutting_the_widest_cells() {
        let mut w = vec![16, 300, 5];
        fit_widths(&mut w, 80);
        assert_eq!(w, vec![16, 55, 5]);
        assert_eq!(w.iter().sum::<usize>() + 4, 80);
        // Two wide columns share the cut; none goes below its floor.
        let mut w = vec![100, 300, 5];
        fit_widths(&mut w, 60);
        assert_eq!(w, vec![26, 25, 5]);
        let mut w = vec![100, 300, 5];
        fit_widths(&mut w, 10);
        assert_eq!(w, vec![8, 8, 5], "no column below 8 characters");
        // A table that fits is left alone.
        let mut w = vec![6, 10, 5];
        fit_widths(&mut w, 80);
        assert_eq!(w, vec![6, 10, 5]);
        assert_eq!(cut("read_coils,write_single_coil", 12), "read_coils,…");
        assert_eq!(cut("modbus", 12), "modbus");
        assert_eq!(cut("ü-ü-ü-ü", 4), "ü-ü…");
    }

    #[test]
    fn time_forms() {
        let now = 1_000_000;
        assert_eq!(parse_time("24h", now).unwrap(), now - 86400);
        assert_eq!(parse_time("30m", now).unwrap(), now - 1800);
        assert_eq!(parse_time("12345", now).unwrap(), 12345);
        assert_eq!(parse_time("1970-01-02", now).unwrap(), 86400);
        assert_eq!(parse_time("1970-01-01T01:00:00Z", now).unwrap(), 3600);
        assert!(parse_time("yesterday-ish", now).is_err());
        assert!(parse_time("1970-01-01T25:00:00", now).is_err());
    }

    #[test]
    fn sql_rendering_quotes_strings() {
        let sql = render_sql(
            "a = ? AND b = ? AND c = ?",
            &[SqlValue::Int(5), SqlValue::Str("it's".into())],
        );
        assert_eq!(sql, "a = 5 AND b = 'it\\'s' AND c = ?");
    }
}
