//! Scheduled detection: the pack queries on sliding windows, and the
//! retro-hunt of each threat-intel load.
//!
//! A scheduled query runs when a multiple of its `every_secs` (Unix time)
//! has passed, over the `window_secs` before it, so every detector replica
//! and every restart evaluates the same windows. The first run after a
//! start is for the latest such window; a run that fails (ClickHouse away)
//! is tried again [`RETRY_SECS`] later. Each row, and each element of an array subject column
//! (sensor-health's problems), raises an alert of rule `query:NAME`; its
//! window is taken from the row's own time column ([`PackQuery::at`]), so
//! an ongoing finding seen again by the overlapping windows that follow
//! raises the same id.
//!
//! A threat-intel load (`intel load`, one version per load) is hunted for
//! once over the last `--hunt-days` of stored flows, `--hunt-settle-secs`
//! after it was loaded: the live rule matches what the detector reads
//! after its next reload, and what it read before is in ClickHouse by then; its contacts raise the
//! `intel-contact` alerts the live rule would have raised (same ids), and
//! the load is then recorded in `intel_hunts` (a failed hunt is tried again
//! [`RETRY_SECS`] later).
//!
//! [`PackQuery::at`]: crate::query::pack::PackQuery::at

use std::collections::BTreeSet;

use anyhow::Context;
use clickhouse::Client;
use serde_json::Value;

use super::rules::{Rule, Scheduled};
use super::streaming::intel_finding;
use super::{Finding, FlowKey, Raised};
use crate::clickhouse_args::ClickHouseArgs;
use crate::query::pack;

/// Seconds before a failed scheduled query or hunt is tried again.
pub const RETRY_SECS: i64 = 30;

/// The last window end each scheduled query ran for, and when one that
/// failed may be tried again.
pub struct Schedule {
    last: Vec<Option<i64>>,
    retry_at: Vec<i64>,
}

impl Schedule {
    pub fn new(n: usize) -> Self {
        Schedule {
            last: vec![None; n],
            retry_at: vec![i64::MIN; n],
        }
    }

    /// (query index, window end) of the runs due at `now_s`.
    pub fn due(&self, queries: &[Scheduled], now_s: i64) -> Vec<(usize, i64)> {
        queries
            .iter()
            .enumerate()
            .filter(|(i, q)| q.rule.enabled && self.retry_at[*i] <= now_s)
            .filter_map(|(i, q)| {
                let until = now_s - now_s.rem_euclid(q.every_secs as i64);
                (self.last[i] != Some(until)).then_some((i, until))
            })
            .collect()
    }

    pub fn done(&mut self, i: usize, until: i64) {
        self.last[i] = Some(until);
    }

    /// Query `i` failed at `now_s`: not tried again for [`RETRY_SECS`].
    pub fn failed(&mut self, i: usize, now_s: i64) {
        self.retry_at[i] = now_s + RETRY_SECS;
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Runs scheduled query `s` over the window ending at `until`; raises an
/// alert per row and subject into `out`; how many rows.
pub async fn run_query(
    ch: &ClickHouseArgs,
    s: &Scheduled,
    until: i64,
    out: &mut Raised,
) -> anyhow::Result<usize> {
    let q = s.plan.query;
    let since = until - s.window_secs as i64;
    let sql = s.plan.sql(since, until)?;
    let sql = match q.at {
        Some(at) => format!("SELECT *, toUInt32({at}) AS alert_at_s FROM (\n{sql}\n)"),
        None => sql,
    };
    let rows = pack::fetch(ch, &sql)
        .await
        .with_context(|| format!("scheduled query {}", q.name))?;
    let rule_name = s.rule_name();
    for row in &rows {
        let vessel = if q.fleet_wide {
            "*".to_string()
        } else {
            row.get("vessel").map(text).unwrap_or_default()
        };
        let sensor_id = row.get("sensor_id").map(text).unwrap_or_default();
        let at_s = row
            .get("alert_at_s")
            .and_then(|v| v.as_u64().or_else(|| text(v).parse().ok()))
            .map_or(until - 1, |t| t as i64);
        // One subject per combination of the subject columns' values.
        let mut subjects = vec![String::new()];
        for col in q.subject {
            let vals: Vec<String> = match row.get(*col) {
                Some(Value::Array(a)) => a.iter().map(text).collect(),
                Some(v) => vec![text(v)],
                None => vec![String::new()],
            };
            subjects = subjects
                .iter()
                .flat_map(|s| {
                    vals.iter().map(move |v| {
                        if s.is_empty() {
                            v.clone()
                        } else {
                            format!("{s} {v}")
                        }
                    })
                })
                .collect();
        }
        let facts: Vec<String> = row
            .iter()
            .filter(|(k, _)| {
                !q.subject.contains(&k.as_str()) && !["vessel", "alert_at_s"].contains(&k.as_str())
            })
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        let facts = crate::query::cut(&facts.join(" "), 200);
        let mut evidence_row = row.clone();
        evidence_row.remove("alert_at_s");
        for subject in subjects {
            out.raise(
                &s.rule,
                Finding {
                    rule: &rule_name,
                    vessel: &vessel,
                    sensor_id: &sensor_id,
                    summary: format!("{}: {subject} ({facts})", q.name),
                    subject,
                    at_us: at_s * 1_000_000,
                    evidence: serde_json::json!({
                        "query": q.name, "since": since, "until": until, "row": evidence_row,
                    }),
                },
            );
        }
    }
    Ok(rows.len())
}

/// The intel loads (versions) already hunted for.
pub async fn hunted(ch: &Client) -> Result<BTreeSet<u64>, clickhouse::error::Error> {
    let v: Vec<u64> = ch
        .query("SELECT DISTINCT version FROM intel_hunts")
        .fetch_all()
        .await?;
    Ok(v.into_iter().collect())
}

/// A hunt done, for [`record_hunt`].
#[derive(Debug, serde::Serialize, clickhouse::Row)]
pub struct Hunt {
    pub version: u64,
    pub since: u32,
    pub until: u32,
    pub indicators: u32,
    pub alerts: u32,
    pub hunted_at: u32,
}

/// Hunts stored flows in [since, until) for the indicators of load
/// `version`, raising `intel-contact` alerts into `out`; how many contacts.
pub async fn hunt(
    ch: &Client,
    version: u64,
    since: i64,
    until: i64,
    rule: &Rule,
    out: &mut Raised,
) -> anyhow::Result<usize> {
    let filter = crate::intel::HuntFilter {
        version: Some(version),
        ..Default::default()
    };
    let contacts = crate::intel::hunt(ch, since, until, filter)
        .await
        .context("retro-hunt")?;
    for c in &contacts {
        let key = FlowKey {
            sensor_id: c.sensor_id.clone(),
            batch_seq: c.batch_seq,
            record_idx: c.record_idx,
            first_seen_us: c.first_seen_us,
            client_ip: c.client_ip.clone(),
            server_ip: c.server_ip.clone(),
            client_port: c.client_port as u32,
            server_port: c.server_port as u32,
            app_protocol: c.app_protocol.clone(),
        };
        let finding = intel_finding(
            &c.vessel,
            &key,
            &c.matched,
            [&c.kind, &c.indicator, &c.source, &c.description],
        );
        out.raise(rule, finding);
    }
    Ok(contacts.len())
}

/// Records that load `h.version` was hunted for.
pub async fn record_hunt(ch: &Client, h: &Hunt) -> Result<(), clickhouse::error::Error> {
    let mut ins = ch.insert::<Hunt>("intel_hunts").await?;
    ins.write(h).await?;
    ins.end().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_end_on_multiples_of_the_cadence_and_a_failure_waits() {
        let rules = crate::detect::rules::parse(
            "scheduled:\n  - {query: scans, every_secs: 3600}\n  - {query: beaconing, every_secs: 600, enabled: false}\n",
        )
        .unwrap();
        let q = &rules.scheduled;
        let mut s = Schedule::new(q.len());
        let t = 1_767_225_600 + 3_700; // 100 s past an hour
        assert_eq!(
            s.due(q, t),
            [(0, t - 100)],
            "the latest window at start; a disabled one never"
        );
        s.done(0, t - 100);
        assert!(s.due(q, t + 3_400).is_empty(), "within the hour");
        assert_eq!(s.due(q, t + 3_500), [(0, t + 3_500)]);
        s.failed(0, t + 3_500);
        assert!(
            s.due(q, t + 3_500 + RETRY_SECS - 1).is_empty(),
            "backing off"
        );
        assert_eq!(s.due(q, t + 3_500 + RETRY_SECS), [(0, t + 3_500)]);
    }
}
