//! Alerts: what a detector raises, stored exactly once, and what analysts
//! did about each (`tidewatch-collector alerts list|show|ack|close|suppress|reopen`).
//!
//! An alert's id is derived from its rule, vessel, subject and time bucket
//! ([`alert_id`]): raising it again (a restarted or re-run detector, a batch
//! delivered twice, two detectors) writes a copy that the `alerts_raw`
//! ReplacingMergeTree collapses, and the `alerts` view reads FINAL. Handling
//! is appended to `alert_history` with who, when and a note, never
//! overwritten; the view shows each alert's latest state.

use anyhow::{bail, Context};
use clickhouse::Client;
use serde::{Deserialize, Serialize};

use crate::query::{print_rows, OutputFormat, Window};

/// An alert as stored in `alerts_raw`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct Alert {
    pub id: String,
    pub rule: String,
    pub severity: String,
    pub vessel: String,
    pub sensor_id: String,
    /// What it is about (an address, a name, a device).
    pub subject: String,
    /// Start of the time bucket of the id, Unix seconds.
    pub bucket_start: u32,
    /// Time of the evidence, microseconds.
    pub first_seen_us: i64,
    pub summary: String,
    /// JSON: the flow key or query row that fired it.
    pub evidence: String,
    pub raised_at: u32,
    /// Grows as `first_seen_us` falls: of the copies of an alert, the one
    /// with the earliest evidence is kept ([`evidence_rank`]).
    pub evidence_rank: u64,
}

/// The `evidence_rank` of evidence at `first_seen_us`.
pub fn evidence_rank(first_seen_us: i64) -> u64 {
    u64::MAX - first_seen_us.max(0) as u64
}

/// The id of the alert of `rule` about `subject` on `vessel` in the bucket
/// starting at `bucket_start`: 32 hex digits of a SHA-256.
pub fn alert_id(rule: &str, vessel: &str, subject: &str, bucket_start: i64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [rule, vessel, subject, &bucket_start.to_string()] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    ctx.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes alerts (copies of stored ones collapse).
pub async fn store(ch: &Client, alerts: &[Alert]) -> Result<(), clickhouse::error::Error> {
    if alerts.is_empty() {
        return Ok(());
    }
    let mut ins = ch.insert::<Alert>("alerts_raw").await?;
    for a in alerts {
        ins.write(a).await?;
    }
    ins.end().await
}

/// An alert with its state, as the `alerts` view gives it.
#[derive(Debug, Clone, Serialize, Deserialize, clickhouse::Row)]
pub struct AlertState {
    pub id: String,
    pub rule: String,
    pub severity: String,
    pub vessel: String,
    pub sensor_id: String,
    pub subject: String,
    pub first_seen: String,
    pub summary: String,
    pub state: String,
    pub state_by: String,
    pub state_note: String,
}

/// One handling step of an alert.
#[derive(Debug, Clone, Serialize, Deserialize, clickhouse::Row)]
pub struct HistoryRow {
    pub id: String,
    pub at_us: i64,
    pub action: String,
    pub who: String,
    pub note: String,
}

/// What an analyst may do to an alert.
#[derive(Debug, Clone, clap::Args)]
pub struct Handling {
    /// The alert's id (from `alerts list`).
    pub id: String,
    /// Who does it (default: $USER).
    #[arg(long, env = "USER")]
    pub who: String,
    /// What was found or decided, for the record.
    #[arg(long)]
    pub note: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum AlertsCmd {
    /// Alerts raised in a window, newest first.
    List {
        #[command(flatten)]
        window: Window,
        /// Only alerts in this state: open, acknowledged, closed, suppressed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        vessel: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// One alert: its evidence and its whole history.
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "json")]
        format: OutputFormat,
    },
    /// Acknowledge: being investigated.
    Ack(Handling),
    /// Close: investigated, with the conclusion in the note.
    Close(Handling),
    /// Suppress: known and accepted (e.g. a vendor's maintenance access).
    Suppress(Handling),
    /// Reopen a closed or suppressed alert.
    Reopen(Handling),
}

const STATES: &[&str] = &["open", "acknowledged", "closed", "suppressed"];

/// Appends one handling step; refuses an id no alert has.
async fn handle(ch: &Client, h: &Handling, action: &str) -> anyhow::Result<()> {
    if h.who.trim().is_empty() || h.note.trim().is_empty() {
        bail!("--who and --note are required: the history is the record of the investigation");
    }
    let known: u64 = ch
        .query("SELECT count() FROM alerts_raw WHERE id = ?")
        .bind(&h.id)
        .fetch_one()
        .await
        .context("reading alerts (run `migrate` first)")?;
    if known == 0 {
        bail!("no alert {:?} (see `alerts list`)", h.id);
    }
    let mut ins = ch.insert::<HistoryRow>("alert_history").await?;
    ins.write(&HistoryRow {
        id: h.id.clone(),
        at_us: tidewatch_proto::util::now_us(),
        action: action.to_string(),
        who: h.who.clone(),
        note: h.note.clone(),
    })
    .await?;
    ins.end().await.context("writing the alert history")?;
    println!("alert {} {action} by {}", h.id, h.who);
    Ok(())
}

pub async fn run(ch: &Client, cmd: AlertsCmd) -> anyhow::Result<()> {
    match cmd {
        AlertsCmd::List {
            window,
            state,
            vessel,
            format,
        } => {
            let (since, until) = window.resolve()?;
            if let Some(s) = &state {
                if !STATES.contains(&s.as_str()) {
                    bail!("--state {s:?} is not one of {}", STATES.join(", "));
                }
            }
            let mut sql = format!(
                "SELECT id, rule, severity, vessel, sensor_id, subject, \
                 toString(toDateTime(intDiv(first_seen_us, 1000000))) AS first_seen, summary, \
                 state, state_by, state_note FROM alerts \
                 WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000"
            );
            if state.is_some() {
                sql.push_str(" AND state = ?");
            }
            if vessel.is_some() {
                sql.push_str(" AND vessel = ?");
            }
            sql.push_str(" ORDER BY first_seen_us DESC, id");
            let mut q = ch.query(&sql);
            for v in state.iter().chain(vessel.iter()) {
                q = q.bind(v);
            }
            let rows: Vec<AlertState> = q.fetch_all().await.context("reading alerts")?;
            print_rows(&rows, format)?;
        }
        AlertsCmd::Show { id, format } => {
            let alert: Vec<Alert> = ch
                .query("SELECT ?fields FROM alerts_raw FINAL WHERE id = ?")
                .bind(&id)
                .fetch_all()
                .await
                .context("reading alerts (run `migrate` first)")?;
            let Some(alert) = alert.into_iter().next() else {
                bail!("no alert {id:?} (see `alerts list`)");
            };
            let history: Vec<HistoryRow> = ch
                .query("SELECT ?fields FROM alert_history WHERE id = ? ORDER BY at_us")
                .bind(&id)
                .fetch_all()
                .await?;
            if matches!(format, OutputFormat::Json) {
                let mut v = serde_json::to_value(&alert)?;
                v["evidence"] =
                    serde_json::from_str(&alert.evidence).unwrap_or(serde_json::Value::Null);
                v["history"] = serde_json::to_value(&history)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_rows(&[alert], format)?;
                print_rows(&history, format)?;
            }
        }
        AlertsCmd::Ack(h) => handle(ch, &h, "acknowledged").await?,
        AlertsCmd::Close(h) => handle(ch, &h, "closed").await?,
        AlertsCmd::Suppress(h) => handle(ch, &h, "suppressed").await?,
        AlertsCmd::Reopen(h) => handle(ch, &h, "reopened").await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_id_names_rule_vessel_subject_and_bucket() {
        let a = alert_id("intel-contact", "mv-aurora", "203.0.113.7", 1_700_000_000);
        assert_eq!(a.len(), 32);
        assert_eq!(
            a,
            alert_id("intel-contact", "mv-aurora", "203.0.113.7", 1_700_000_000)
        );
        for other in [
            alert_id("intel-contact", "mv-aurora", "203.0.113.7", 1_700_003_600),
            alert_id("intel-contact", "mv-borealis", "203.0.113.7", 1_700_000_000),
            alert_id("new-device", "mv-aurora", "203.0.113.7", 1_700_000_000),
            // Separators keep ("ab", "c") and ("a", "bc") apart.
            alert_id("intel-contact", "mv-auror", "a203.0.113.7", 1_700_000_000),
        ] {
            assert_ne!(a, other);
        }
    }
}
