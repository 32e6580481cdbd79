//! `tidewatch-collector detect`: streaming detection as batches arrive.
//!
//! Its own consumer group on the batches topic (it neither slows nor waits
//! for the sink), the same check of ingest's signature as the sink, then
//! each flow against the rules. Rules so far:
//!
//! - `intel-contact`: a flow whose client or server address, or a name it
//!   carried (DNS query, TLS SNI, HTTP Host), equals a threat-intel
//!   indicator (`intel load`; reloaded every `--intel-refresh-secs`), before
//!   the indicator's end of validity. One alert per vessel, indicator and
//!   window (`bucket_secs`, default `--bucket-secs`).
//!
//! - `ot-write`: a write, control or program operation from a host that is
//!   neither listed as an engineering station of its vessel in the rules
//!   file nor reported in that role by the vessel's sensors at least
//!   `known_after_secs` before (the stations are reloaded with the
//!   indicators). One alert per vessel, writing host and window.
//!
//! Severity, windows and suppressions come from the rules file
//! ([`rules`]; `--rules FILE`, checked alone with `--check-rules FILE`).
//!
//! Per chunk of records: alerts are stored in ClickHouse (`alerts_raw`,
//! retried while it is away) and published to the alerts topic, and only
//! then are the offsets committed, so a crash re-reads the chunk and raises
//! the same alerts again under the same ids, which collapse ([`crate::alerts`]).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use clickhouse::Client;
use prost::Message as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tidewatch_proto::codec;
use tidewatch_proto::util::ip_text;
use tidewatch_proto::v1::{FlowRecord, IngestedBatch};
use tracing::{debug, info, warn};

use crate::alerts::{alert_id, evidence_rank, Alert};
use crate::clickhouse_args::ClickHouseArgs;
use crate::envelope::{signature_of, VerifyArgs, VerifyKeys};
use crate::kafka::KafkaArgs;
use crate::metrics::DetectMetrics;
use rules::{Rule, RulesFile};

pub mod rules;

/// Kafka topic the detector publishes alerts to (JSON, key = alert id).
pub const ALERTS_TOPIC: &str = "tidewatch.alerts.v1";

#[derive(Debug, clap::Args)]
pub struct DetectArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub envelope: VerifyArgs,
    /// Kafka consumer group of the detectors (apart from the sinks').
    #[arg(
        long,
        env = "TIDEWATCH_DETECT_GROUP",
        default_value = "tidewatch-detect"
    )]
    pub group: String,
    /// Topic alerts are published to.
    #[arg(long, env = "TIDEWATCH_ALERTS_TOPIC", default_value = ALERTS_TOPIC)]
    pub alerts_topic: String,
    /// The rules file (YAML: severity, window, suppressions per rule; see
    /// the README). Default: every rule on with its defaults.
    #[arg(long, env = "TIDEWATCH_DETECT_RULES", value_name = "FILE")]
    pub rules: Option<std::path::PathBuf>,
    /// Only check a rules file (errors with their line and column) and exit.
    #[arg(long, value_name = "FILE")]
    pub check_rules: Option<std::path::PathBuf>,
    /// Seconds between reloads of the threat-intel indicators.
    #[arg(long, default_value_t = 60)]
    pub intel_refresh_secs: u64,
    /// An alert is raised once per rule, vessel and subject in a window of
    /// this many seconds (of the evidence's time).
    #[arg(long, default_value_t = 3600)]
    pub bucket_secs: u64,
    /// Milliseconds to wait for more records before handling a chunk.
    #[arg(long, default_value_t = 500)]
    pub max_wait_ms: u64,
    /// Records per chunk at most.
    #[arg(long, default_value_t = 1000)]
    pub max_records: usize,
    /// Serve Prometheus metrics (/metrics) and liveness (/healthz) over
    /// plain HTTP on this address (default: off).
    #[arg(long, env = "TIDEWATCH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// One loaded indicator, as the detector matches it.
#[derive(Debug, Clone, Deserialize, clickhouse::Row)]
struct Indicator {
    source: String,
    kind: String,
    value: String,
    matches: String,
    description: String,
    valid_until: u32,
}

/// The indicators by what they match.
#[derive(Default)]
pub struct IntelIndex {
    by_match: HashMap<String, Vec<Indicator>>,
}

impl IntelIndex {
    async fn load(ch: &Client) -> Result<Self, clickhouse::error::Error> {
        let rows: Vec<Indicator> = ch
            .query("SELECT source, kind, value, matches, description, toUInt32(valid_until) AS valid_until FROM intel_indicators")
            .fetch_all()
            .await?;
        let mut by_match: HashMap<String, Vec<Indicator>> = HashMap::new();
        for r in rows {
            by_match.entry(r.matches.clone()).or_default().push(r);
        }
        Ok(IntelIndex { by_match })
    }

    fn len(&self) -> usize {
        self.by_match.values().map(Vec::len).sum()
    }

    /// The indicators `f` contacted while they were valid, with what matched.
    fn contacts<'a>(&'a self, f: &FlowRecord) -> Vec<(String, &'a Indicator)> {
        if self.by_match.is_empty() {
            return Vec::new();
        }
        let mut keys: Vec<String> = [&f.client_ip, &f.server_ip]
            .into_iter()
            .filter_map(|ip| ip_text(ip))
            .collect();
        keys.extend(f.indicators.iter().map(|n| n.to_ascii_lowercase()));
        let at_s = f.first_seen_us / 1_000_000;
        let mut out = Vec::new();
        for k in keys {
            for i in self.by_match.get(&k).into_iter().flatten() {
                if i.valid_until == 0 || at_s <= i.valid_until as i64 {
                    out.push((k.clone(), i));
                }
            }
        }
        out
    }
}

/// What a rule found in a flow.
struct Finding {
    rule: &'static str,
    severity: rules::Severity,
    subject: String,
    summary: String,
    /// Rule-specific evidence, beside the flow's key.
    detail: serde_json::Value,
}

/// Raises the alert of `finding` in flow `idx` of `env` into `out`: one per
/// id (rule, vessel, subject, window), with the earliest flow as evidence.
fn raise(
    out: &mut BTreeMap<String, Alert>,
    env: &IngestedBatch,
    idx: usize,
    f: &FlowRecord,
    bucket_secs: i64,
    now: u32,
    finding: Finding,
) {
    let at_s = f.first_seen_us / 1_000_000;
    let bucket = at_s - at_s.rem_euclid(bucket_secs);
    let id = alert_id(finding.rule, &env.vessel, &finding.subject, bucket);
    if out
        .get(&id)
        .is_some_and(|a| a.first_seen_us <= f.first_seen_us)
    {
        return;
    }
    let mut evidence = serde_json::json!({
        "sensor_id": env.sensor_id, "batch_seq": env.seq, "record_idx": idx,
        "first_seen_us": f.first_seen_us,
        "client_ip": ip_text(&f.client_ip).unwrap_or_default(),
        "server_ip": ip_text(&f.server_ip).unwrap_or_default(),
        "client_port": f.client_port, "server_port": f.server_port,
        "app_protocol": f.app_protocol,
    });
    if let (Some(e), serde_json::Value::Object(d)) = (evidence.as_object_mut(), finding.detail) {
        e.extend(d);
    }
    out.insert(
        id.clone(),
        Alert {
            id,
            rule: finding.rule.into(),
            severity: finding.severity.name().into(),
            vessel: env.vessel.clone(),
            sensor_id: env.sensor_id.clone(),
            subject: finding.subject,
            bucket_start: bucket.clamp(0, u32::MAX as i64) as u32,
            first_seen_us: f.first_seen_us,
            summary: finding.summary,
            evidence: evidence.to_string(),
            raised_at: now,
            evidence_rank: evidence_rank(f.first_seen_us),
        },
    );
}

/// When each host was first reported as an engineering station, by
/// (vessel, address), microseconds.
#[derive(Default)]
pub struct Stations {
    first_seen: HashMap<(String, String), i64>,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct StationRow {
    vessel: String,
    ip: String,
    first_seen_us: i64,
}

impl Stations {
    async fn load(ch: &Client) -> Result<Self, clickhouse::error::Error> {
        let rows: Vec<StationRow> = ch
            .query(
                "SELECT vessel, ip, min(first_seen_us) AS first_seen_us FROM \
                 (SELECT vessel, arrayJoin(ips) AS ip, first_seen_us FROM assets \
                  WHERE has(roles, 'engineering_station')) GROUP BY vessel, ip",
            )
            .fetch_all()
            .await?;
        Ok(Stations {
            first_seen: rows
                .into_iter()
                .map(|r| ((r.vessel, r.ip), r.first_seen_us))
                .collect(),
        })
    }

    /// Whether `host` was a station of `vessel` at least `ahead_us` before `at_us`.
    fn known(&self, vessel: &str, host: &str, at_us: i64, ahead_us: i64) -> bool {
        self.first_seen
            .get(&(vessel.to_string(), host.to_string()))
            .is_some_and(|&t| t <= at_us - ahead_us)
    }
}

/// The `ot-write` alerts of one batch (by id: one per id); how many its
/// suppressions held back.
pub fn evaluate_ot_writes(
    env: &IngestedBatch,
    flows: &[FlowRecord],
    stations: &Stations,
    rule: &rules::OtWrite,
    default_bucket_secs: i64,
    out: &mut BTreeMap<String, Alert>,
) -> u64 {
    use tidewatch_proto::v1::OperationClass;
    let common = rule.rule();
    if !common.enabled {
        return 0;
    }
    let bucket_secs = common
        .bucket_secs
        .map_or(default_bucket_secs, |b| b.0 as i64);
    let now = (tidewatch_proto::util::now_us() / 1_000_000).max(0) as u32;
    let mut suppressed = 0;
    for (idx, f) in flows.iter().enumerate() {
        let writes: Vec<&str> = f
            .operations
            .iter()
            .filter(|o| {
                matches!(
                    OperationClass::try_from(o.class),
                    Ok(OperationClass::Write | OperationClass::Control | OperationClass::Program)
                )
            })
            .map(|o| o.name.as_str())
            .collect();
        if writes.is_empty() {
            continue;
        }
        let client = ip_text(&f.client_ip).unwrap_or_default();
        if rule.allowed(&env.vessel, &client)
            || stations.known(
                &env.vessel,
                &client,
                f.first_seen_us,
                rule.known_after_secs as i64 * 1_000_000,
            )
        {
            continue;
        }
        let at_s = f.first_seen_us / 1_000_000;
        if common.suppressed(&env.vessel, &client, at_s) {
            suppressed += 1;
            continue;
        }
        let server = ip_text(&f.server_ip).unwrap_or_default();
        let finding = Finding {
            rule: "ot-write",
            severity: common.severity,
            subject: client.clone(),
            summary: format!(
                "{client} -> {server}:{} {} {} from a host not known as an engineering station",
                f.server_port,
                f.app_protocol,
                writes.join(",")
            ),
            detail: serde_json::json!({ "operations": writes }),
        };
        raise(out, env, idx, f, bucket_secs, now, finding);
    }
    suppressed
}

/// The alerts one batch raises under `rule` (by id: one per id); how many
/// contacts its suppressions held back.
pub fn evaluate(
    env: &IngestedBatch,
    flows: &[FlowRecord],
    intel: &IntelIndex,
    rule: &Rule,
    default_bucket_secs: i64,
    out: &mut BTreeMap<String, Alert>,
) -> u64 {
    if !rule.enabled {
        return 0;
    }
    let bucket_secs = rule.bucket_secs.map_or(default_bucket_secs, |b| b.0 as i64);
    let now = (tidewatch_proto::util::now_us() / 1_000_000).max(0) as u32;
    let mut suppressed = 0;
    for (idx, f) in flows.iter().enumerate() {
        for (matched, i) in intel.contacts(f) {
            let at_s = f.first_seen_us / 1_000_000;
            if rule.suppressed(&env.vessel, &i.value, at_s) {
                suppressed += 1;
                continue;
            }
            let (client, server) = (
                ip_text(&f.client_ip).unwrap_or_default(),
                ip_text(&f.server_ip).unwrap_or_default(),
            );
            let finding = Finding {
                rule: "intel-contact",
                severity: rule.severity,
                subject: i.value.clone(),
                summary: format!(
                    "{client} -> {server}:{} contacted {} {} ({}{}{})",
                    f.server_port,
                    i.kind,
                    i.value,
                    i.source,
                    if i.description.is_empty() { "" } else { ": " },
                    i.description
                ),
                detail: serde_json::json!({
                    "matched": matched,
                    "indicator": {"source": i.source, "kind": i.kind, "value": i.value,
                                  "description": i.description},
                }),
            };
            raise(out, env, idx, f, bucket_secs, now, finding);
        }
    }
    suppressed
}

/// Reads and checks a rules file.
pub fn read_rules(path: &std::path::Path) -> anyhow::Result<RulesFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read rules {}", path.display()))?;
    rules::parse(&text).map_err(|e| anyhow::anyhow!("rules {}: {e}", path.display()))
}

/// Sets the detector up and runs it until SIGTERM/SIGINT.
pub async fn run(args: DetectArgs) -> anyhow::Result<()> {
    if let Some(p) = &args.check_rules {
        let r = read_rules(p)?;
        let (ic, ow) = (&r.rules.intel_contact, r.rules.ot_write.rule());
        for (name, rule) in [("intel-contact", ic), ("ot-write", &ow)] {
            println!(
                "rules {}: {name}: {}, severity {}, window {} s, {} suppression(s)",
                p.display(),
                if rule.enabled { "on" } else { "off" },
                rule.severity.name(),
                rule.bucket_secs.map_or(args.bucket_secs, |b| b.0),
                rule.suppress.len()
            );
        }
        let hosts: usize = r
            .rules
            .ot_write
            .engineering_hosts
            .values()
            .map(Vec::len)
            .sum();
        println!(
            "rules {}: valid; ot-write lists {hosts} engineering host(s)",
            p.display()
        );
        return Ok(());
    }
    let rules = match &args.rules {
        Some(p) => read_rules(p)?,
        None => RulesFile::default(),
    };
    args.clickhouse.validate()?;
    anyhow::ensure!(
        args.bucket_secs > 0 && args.intel_refresh_secs > 0 && args.max_records > 0,
        "--bucket-secs, --intel-refresh-secs and --max-records must be at least 1"
    );
    let verify = args.envelope.keys()?;
    let producer = args.kafka.producer(30_000, 64)?;
    crate::kafka::wait_for_topic(
        &producer,
        &args.kafka.kafka_brokers,
        &args.kafka.kafka_topic,
    )
    .await?;
    crate::kafka::wait_for_topic(&producer, &args.kafka.kafka_brokers, &args.alerts_topic).await?;
    let consumer = args.kafka.consumer(&args.group)?;
    consumer
        .subscribe(&[&args.kafka.kafka_topic])
        .with_context(|| format!("subscribing to {}", args.kafka.kafka_topic))?;
    let ch = args.clickhouse.client();
    let metrics = DetectMetrics::new();
    let stop = crate::metrics::stop_on_signal("finishing the current chunk");
    let metrics_task =
        crate::metrics::start_until(args.metrics_listen, metrics.registry.clone(), stop.clone())
            .await?;
    let mut intel = IntelIndex::default();
    let mut stations = Stations::default();
    let mut intel_loaded: Option<Instant> = None;
    let refresh = Duration::from_secs(args.intel_refresh_secs);
    let limits = codec::DecodeLimits {
        max_decoded_bytes: 16 * 1024 * 1024,
        max_records: 50_000,
    };
    info!(group = %args.group, topic = %args.kafka.kafka_topic, alerts_topic = %args.alerts_topic, "detector started");
    'chunks: while !*stop.borrow() {
        if intel_loaded.is_none_or(|t| t.elapsed() >= refresh) {
            match tokio::try_join!(IntelIndex::load(&ch), Stations::load(&ch)) {
                Ok((i, st)) => {
                    if intel_loaded.is_none() || i.len() != intel.len() {
                        info!(indicators = i.len(), "threat-intel indicators loaded");
                    }
                    metrics.indicators.set(i.len() as f64);
                    intel = i;
                    stations = st;
                    intel_loaded = Some(Instant::now());
                }
                // Keep the previous sets; retried at the next chunk.
                Err(e) => {
                    warn!(error = %e, "cannot load threat-intel indicators and engineering stations")
                }
            }
        }
        let mut alerts = BTreeMap::new();
        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut records = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(args.max_wait_ms);
        let mut stop_wait = stop.clone();
        while records < args.max_records {
            let m = tokio::select! {
                m = tokio::time::timeout_at(deadline, consumer.recv()) => m,
                _ = stop_wait.wait_for(|v| *v) => break,
            };
            let m = match m {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    warn!(error = %e, "Kafka consume error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                Err(_) => break,
            };
            records += 1;
            metrics.kafka_records.inc();
            let e = offsets
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(m.offset());
            *e = (*e).max(m.offset());
            let Some(value) = m.payload() else { continue };
            if let Err(why) = check(verify.as_ref(), value, signature_of(&m).as_deref()) {
                metrics.envelopes_refused.inc();
                warn!(partition = m.partition(), offset = m.offset(), reason = %why, "record refused, not checked for alerts");
                continue;
            }
            let Ok(env) = IngestedBatch::decode(value) else {
                continue;
            };
            let Ok(batch) = codec::decode(env.encoding, &env.payload, limits) else {
                continue;
            };
            metrics.flows_checked.add(batch.flows.len() as u64);
            let held = evaluate(
                &env,
                &batch.flows,
                &intel,
                &rules.rules.intel_contact,
                args.bucket_secs as i64,
                &mut alerts,
            );
            metrics.suppressed.add(held);
            let held = evaluate_ot_writes(
                &env,
                &batch.flows,
                &stations,
                &rules.rules.ot_write,
                args.bucket_secs as i64,
                &mut alerts,
            );
            metrics.suppressed.add(held);
        }
        if records == 0 {
            continue;
        }
        let alerts: Vec<Alert> = alerts.into_values().collect();
        // Stored and published before the offsets move on.
        let mut backoff = Duration::from_millis(200);
        while let Err(e) = crate::alerts::store(&ch, &alerts).await {
            warn!(error = %e, alerts = alerts.len(), "cannot store alerts; retrying");
            if *stop.borrow() {
                break 'chunks;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        for a in &alerts {
            let json = serde_json::to_vec(a)?;
            loop {
                let rec = FutureRecord::to(&args.alerts_topic)
                    .key(&a.id)
                    .payload(&json);
                match producer
                    .send(rec, Timeout::After(Duration::from_secs(30)))
                    .await
                {
                    Ok(_) => break,
                    Err((e, _)) => {
                        warn!(error = %e, "cannot publish an alert; retrying");
                        if *stop.borrow() {
                            break 'chunks;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            metrics.alerts.inc(&a.rule);
            info!(id = %a.id, rule = %a.rule, vessel = %a.vessel, sensor = %a.sensor_id, subject = %a.subject,
                summary = %a.summary, "alert raised");
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &offsets {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
            {
                warn!(error = %e, "cannot build offset list");
            }
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => debug!(records, "offsets committed"),
            Err(e) => {
                warn!(error = %e, "offset commit failed; records will be read again (alerts collapse)")
            }
        }
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    info!(
        flows_checked = metrics.flows_checked.get(),
        "detector stopped"
    );
    Ok(())
}

/// Whether a record is ingest's (when signatures are checked).
fn check(keys: Option<&VerifyKeys>, value: &[u8], sig: Option<&[u8]>) -> Result<(), String> {
    match keys {
        Some(k) => k.verify(value, sig).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}
